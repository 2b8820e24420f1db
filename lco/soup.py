"""``python -m lco.soup adapters=[a,b,...] [weights=[...]] [mode=weighted|uniform|greedy] out=DIR``: a model soup.

In: lco LoRA adapter folders (``<run>/adapter`` of ``lco.train``: adapter_config.json, adapter_model.safetensors,
processor files, ``lco_embedding.json``). They must agree on every card field (family, base model, pooling,
normalize, prompts, media settings) and adapt the same modules; ranks and alphas may differ. Anything else (not a
folder, a missing or unreadable file, a non-LoRA method, DoRA, shapes that do not fit the base) stops the run
with one ``ConfigError`` naming the folder and the field, before anything is written.
Out: ``out``, a standard peft adapter folder (``PeftModel.from_pretrained`` and ``load_embedder`` load it), the
first input's processor files, and its card plus a ``soup`` entry: inputs, given and used weights, mode, ranks
(greedy: the metric, the validation source and every step's score and decision).

Exactness. Adapter i adds ``s_i * B_i @ A_i`` to each weight, ``s_i = lora_alpha_i / r_i`` (``/ sqrt(r_i)`` with
rsLoRA). The soup stacks the ranks: ``A = cat_i(w_i * s_i * A_i)`` (rows), ``B = cat_i(B_i)`` (columns), with
``r = lora_alpha = sum_i r_i`` (scaling 1), so ``B @ A = sum_i w_i * s_i * B_i @ A_i`` exactly, whatever the ranks.
LoRA on an MoE layer's fused expert weights (``method.experts=true``, peft ``target_parameters``) keeps one
rank-``r`` update per expert in one A [E*r, in] (expert-major rows) and one B [out, r*E] (rank-major columns);
the soup stacks the ranks inside each expert, so every expert's delta is the same exact mean.
This is what peft's ``add_weighted_adapter(combination_type="cat")`` builds (it multiplies each A by its weight and
its layer's scaling and sets ``lora_alpha = r``; tests check both agree); ``"linear"`` is not exact (it scales A
and B by ``sqrt(w * s)`` and sums them separately: cross terms ``B_i @ A_j``). It is done here on the saved tensors
in float32, so the base's dtype does not round the soup; the base is loaded only to check shapes and, for greedy,
to score. Weights are a mean: non-negative, normalised to sum 1 (``weights=[2,1]`` is ``[2/3, 1/3]``); the card
keeps both. Default: uniform.

Greedy (Wortsman et al. 2022, "Model soups"): score each adapter alone on ``val`` (anchor -> positive retrieval,
``metric``), sort by score (ties keep input order), start from the best, and add the next one to the uniform soup
only if the score rises strictly. Rejected adapters get weight 0 in the card; every step is printed and recorded.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from lco import tracking
from lco.checkpointing import atomic_folder
from lco.cli import DEVICE, entry
from lco.config import check_config, check_modalities
from lco.errors import ConfigError
from lco import card as cards
from lco.provenance import environment

MODES = ("weighted", "uniform", "greedy")
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")  # peft's saved names, adapter name stripped
FIX = "point adapters= at the adapter/ folder of a finished lco LoRA run (logs/train/runs/<date>_<time>/adapter)"


@dataclass
class Ingredient:
    folder: Path
    card: dict
    config: dict  # adapter_config.json
    tensors: dict[str, torch.Tensor]  # "<module>.A" / "<module>.B", module named as in the base model
    experts: dict[str, int]  # module -> experts sharing its A/B (1: a linear layer; E: fused MoE expert weights)

    @property
    def scale(self) -> float:
        r = self.config["r"]
        return self.config["lora_alpha"] / (math.sqrt(r) if self.config.get("use_rslora") else r)

    @property
    def modules(self) -> list[str]:
        return sorted({k[:-2] for k in self.tensors})


def _read_json(path: Path, folder: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"adapter {folder} has no {path.name}: {FIX}.")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        value = f"({err})"
    if not isinstance(value, dict):
        raise ConfigError(f"adapter {folder}: {path.name} cannot be read {value}; copy it again from the run.")
    return value


def read_ingredient(folder: Path) -> Ingredient:
    """Read and check one input folder; ``ConfigError`` naming the folder and the field when it cannot be souped."""
    from safetensors.torch import load_file

    if not folder.is_dir():
        raise ConfigError(f"adapter {folder} is not a folder: {FIX}.")
    card = cards.read(folder, f"adapter {folder}")
    if card["method"] != "lora":
        raise ConfigError(f"adapter {folder}: {cards.NAME} has method={card['method']!r}, but only LoRA adapters "
                          "(method=lora) can be souped; leave it out of adapters=.")
    config = _read_json(folder / CONFIG, folder)
    r = config.get("r")
    unsupported = {"r": not (isinstance(r, int) and r > 0 and isinstance(config.get("lora_alpha"), (int, float))),
                   "peft_type": config.get("peft_type") != "LORA", "use_dora": bool(config.get("use_dora")),
                   "bias": config.get("bias", "none") != "none", "modules_to_save": bool(config.get("modules_to_save")),
                   "rank_pattern": bool(config.get("rank_pattern")), "alpha_pattern": bool(config.get("alpha_pattern"))}
    for field, bad in unsupported.items():
        if bad:
            raise ConfigError(f"adapter {folder}: {CONFIG} has {field}={config.get(field)!r}; lco.soup averages "
                              "plain LoRA deltas (B @ A) only, as lco's method=lora writes them. Leave it out.")
    if not (folder / WEIGHTS).is_file():
        raise ConfigError(f"adapter {folder} has no {WEIGHTS}: the run did not finish writing it; {FIX}.")
    try:
        raw = load_file(str(folder / WEIGHTS))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise ConfigError(f"adapter {folder}: {WEIGHTS} cannot be read ({err}); the file is damaged or cut "
                          "short. Copy it again from the run folder, or retrain.") from None
    tensors = {}
    for key, value in raw.items():
        match = KEY.match(key)
        if match is None:
            raise ConfigError(f"adapter {folder}: {WEIGHTS} holds {key!r}, not a LoRA A/B weight; lco.soup "
                              "averages plain LoRA adapters only. Leave it out.")
        tensors[f"{match[1]}.{match[2]}"] = value
    if not tensors:
        raise ConfigError(f"adapter {folder}: {WEIGHTS} holds no LoRA weights; {FIX}.")
    ingredient = Ingredient(folder, card, config, tensors, {})
    for module in ingredient.modules:
        a, b = tensors.get(f"{module}.A"), tensors.get(f"{module}.B")
        experts = a.shape[0] // r if a is not None and a.dim() == 2 and a.shape[0] % r == 0 else 0
        if not config.get("target_parameters") or ".experts" not in module:  # one linear layer, rank r
            experts = min(experts, 1)
        if not experts or b is None or b.dim() != 2 or b.shape[1] != r * experts:
            shapes = [tuple(t.shape) if t is not None else None for t in (a, b)]
            raise ConfigError(f"adapter {folder}: {WEIGHTS} has LoRA A/B shapes {shapes} at {module}, which do not "
                              f"fit r={r} in {CONFIG}; the files do not belong together. Copy both again.")
        ingredient.experts[module] = experts
    return ingredient


def read_ingredients(folders: list[Path]) -> list[Ingredient]:
    """Every input read and checked against the first: one ``ConfigError`` listing all problems, or the inputs."""
    problems, ingredients = [], []
    for folder in folders:
        try:
            ingredients.append(read_ingredient(folder))
        except ConfigError as err:
            problems.append(str(err))
    first = ingredients[0] if ingredients else None
    for other in ingredients[1:]:
        for field in sorted((set(first.card) | set(other.card)) - {"soup", "provenance"}):
            if other.card.get(field) != first.card.get(field):
                problems.append(f"adapter {other.folder}: {cards.NAME} field {field!r} is {other.card.get(field)!r} but "
                                f"{first.folder} has {first.card.get(field)!r}; a soup needs adapters of one base "
                                "model with the same embedding settings. Leave one out, or retrain it to match.")
        if other.modules != first.modules:
            extra = sorted(set(other.modules) ^ set(first.modules))
            problems.append(f"adapter {other.folder}: LoRA target layers differ from {first.folder} ({len(extra)} "
                            f"modules in only one, e.g. {extra[0]}); a soup needs LoRA on the same layers "
                            "(method.targets, method.layers). Leave one out, or retrain it to match.")
    if problems:
        raise ConfigError("cannot make a soup of these adapters; nothing was written:\n  - " + "\n  - ".join(problems))
    return ingredients


def check_base(model: torch.nn.Module, ingredients: list[Ingredient]) -> None:
    """Every adapted module exists in the base model as a layer whose shape fits the LoRA A/B shapes (MoE experts:
    a fused weight of that module with E x out x in entries; peft names a module's second adapted parameter
    ``<module>.base_layer``)."""
    layers = dict(model.named_modules())
    for ing in ingredients:
        for module in ing.modules:
            layer, (out_b, in_a) = layers.get(module), (ing.tensors[f"{module}.B"].shape[0], ing.tensors[f"{module}.A"].shape[1])
            shape = tuple(layer.weight.shape) if isinstance(layer, torch.nn.Linear) else None
            experts = ing.experts[module]
            if experts > 1:  # (E, out, in) in some order: match the entry count of one of the module's 3-D weights
                owner = layers.get(re.sub(r"(\.base_layer)+$", "", module))
                sizes = [p.numel() for p in owner.parameters(recurse=False) if p.dim() == 3] if owner else []
                shape = (out_b, in_a) if experts * out_b * in_a in sizes else None
            if shape != (out_b, in_a):
                raise ConfigError(f"adapter {ing.folder}: its LoRA at {module} is for a {out_b} x {in_a} layer, but "
                                  f"the base {ing.card['base_model']} has {shape or 'no such linear layer'} there: it "
                                  f"was not trained on this base. Check base_model in {cards.NAME}, or leave it out.")


def resolve_weights(mode: str, weights, n: int) -> list[float]:
    """The weights of the mean, normalised to sum 1 (uniform when none are given)."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: use one of {', '.join(MODES)}.")
    if not n:
        raise ConfigError("adapters= is empty: give at least one adapter folder, e.g. adapters=[<run1>/adapter,<run2>/adapter].")
    if weights is None:
        return [1.0 / n] * n
    try:
        weights = [float(w) for w in (weights if isinstance(weights, (list, tuple)) else [weights])]
    except (TypeError, ValueError):
        raise ConfigError(f"weights={weights}: give numbers, one per adapter, e.g. weights=[0.7,0.3].") from None
    if mode != "weighted":
        raise ConfigError(f"weights= goes with mode=weighted; mode={mode} chooses its own weights. Drop weights=.")
    if len(weights) != n:
        raise ConfigError(f"weights= has {len(weights)} values for {n} adapters: give one weight per adapter, in "
                          "the order of adapters=.")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"weights={weights}: a soup is a weighted mean, so weights must be >= 0 with a positive "
                          "sum (they are normalised to sum 1).")
    return [w / sum(weights) for w in weights]


def write_adapter(ingredients: list[Ingredient], weights: list[float], folder: Path) -> int:
    """Write the stacked-rank soup (see the module docstring) as a peft adapter folder; returns its rank."""
    from safetensors.torch import save_file

    used = [(ing, w) for ing, w in zip(ingredients, weights) if w > 0]
    tensors = {}
    for module in used[0][0].modules:
        key, experts = f"base_model.model.{module}.lora_", used[0][0].experts[module]
        a = [ing.tensors[f"{module}.A"].float().reshape(experts, -1, ing.tensors[f"{module}.A"].shape[1])
             * (w * ing.scale) for ing, w in used]  # (experts, r_i, in)
        b = [ing.tensors[f"{module}.B"].float().reshape(ing.tensors[f"{module}.B"].shape[0], -1, experts)
             for ing, _ in used]  # (out, r_i, experts)
        tensors[key + "A.weight"] = torch.cat(a, dim=1).flatten(0, 1).contiguous()
        tensors[key + "B.weight"] = torch.cat(b, dim=1).flatten(1, 2).contiguous()
    rank = sum(ing.config["r"] for ing, _ in used)
    config = {**used[0][0].config, "r": rank, "lora_alpha": rank, "use_rslora": False}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2))
    return rank


def attach(embedder, folder: Path, name: str) -> None:
    """Put the adapter in ``folder`` on the embedder as the only active one (peft), dropping the previous one."""
    from peft import PeftModel

    if not isinstance(embedder.model, PeftModel):
        embedder.model = PeftModel.from_pretrained(embedder.model, str(folder), adapter_name=name)
        return
    previous = embedder.model.active_adapter
    embedder.model.load_adapter(str(folder), adapter_name=name)
    embedder.model.set_adapter(name)
    embedder.model.delete_adapter(previous)


def retrieval(embedder, records: list[dict], batch_size: int) -> dict[str, float]:
    """Anchor -> positive retrieval among all positives, as lco.train's validation: r1, r5, t2t_r1, i2t_r1, ..."""
    from lco.analysis.retrieval import retrieval_metrics
    from lco.prompts import modality

    anchors = embedder.encode([r["anchor"] for r in records], batch_size)
    positives = embedder.encode([r["positive"] for r in records], batch_size)
    return retrieval_metrics(anchors, positives, [modality(r["anchor"]) for r in records],
                             [modality(r["positive"]) for r in records])


def greedy(embedder, ingredients: list[Ingredient], records: list[dict], metric: str, batch_size: int):
    """Greedy soup: returns (weights over all inputs, recorded steps, final score)."""
    n, calls = len(ingredients), itertools.count()

    def score(members: list[int]) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            write_adapter(ingredients, [1.0 / len(members) if i in members else 0.0 for i in range(n)], Path(tmp))
            attach(embedder, Path(tmp), f"candidate{next(calls)}")
        metrics = retrieval(embedder, records, batch_size)
        if metric not in metrics:
            raise ConfigError(f"metric={metric!r} is not measured on this val source; it gives {', '.join(metrics)}.")
        return metrics[metric]

    alone = [score([i]) for i in range(n)]
    order = sorted(range(n), key=lambda i: -alone[i])
    members, best = [order[0]], alone[order[0]]
    steps = [{"adapter": str(ingredients[order[0]].folder), "alone": alone[order[0]], "soup": best, "added": True}]
    print(f"lco.soup: greedy on {metric}; alone: " + ", ".join(f"{ing.folder} {s:.4f}" for ing, s in zip(ingredients, alone)))
    print(f"  start with {ingredients[order[0]].folder}: {metric} {best:.4f}")
    for i in order[1:]:
        value = score(members + [i])
        added = value > best  # ties do not add: the smaller soup is kept
        steps.append({"adapter": str(ingredients[i].folder), "alone": alone[i], "soup": value, "added": added})
        print(f"  + {ingredients[i].folder}: {metric} {value:.4f} {'>' if added else '<='} {best:.4f} -> "
              f"{'added' if added else 'not added'}")
        if added:
            members, best = members + [i], value
    return [1.0 / len(members) if i in members else 0.0 for i in range(n)], steps, best


def save_soup(out: Path, ingredients: list[Ingredient], weights: list[float], soup: dict) -> None:
    """Write ``out`` whole or not at all: adapter, the first input's processor files, card + ``soup`` entry."""
    with atomic_folder(out) as tmp:  # out, if it exists, is empty (checked before)
        soup["rank"] = write_adapter(ingredients, weights, tmp)
        skip = {CONFIG, WEIGHTS, cards.NAME, "README.md"}
        for path in ingredients[0].folder.iterdir():
            if path.is_file() and path.name not in skip:
                shutil.copy2(path, tmp / path.name)
        provenance = {**environment(), "base_model": ingredients[0].card.get("provenance", {}).get("base_model"),
                      "ingredients": [i.card.get("provenance") for i in ingredients]}
        cards.write(tmp, {**ingredients[0].card, "soup": soup, "provenance": provenance})


def run(cfg: DictConfig) -> dict:
    check_config(cfg)
    folders = [Path(str(a)) for a in (cfg.adapters if isinstance(cfg.adapters, ListConfig) else [cfg.adapters])]
    given = OmegaConf.to_container(cfg.weights) if isinstance(cfg.weights, ListConfig) else cfg.weights
    weights = resolve_weights(cfg.mode, given, len(folders))
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out={out} already exists and is not empty: choose a new folder (or delete it).")
    ingredients = read_ingredients(folders)
    card = ingredients[0].card
    val, records = None, []
    if cfg.mode == "greedy":
        val = instantiate(cfg.val)
        records = val.load()
        media = {m for r in records for side in ("anchor", "positive") for m in ("image", "audio", "video") if r[side].get(m)}
        check_modalities(media, card["family"], card["base_model"], what="val")
    embedder = cards.embedder(card, card["base_model"], dtype=cfg.dtype).eval()
    check_base(embedder.model, ingredients)
    soup = {"mode": cfg.mode, "inputs": [str(f.resolve()) for f in folders], "weights_given": given,
            "weights": weights, "normalised": "weights sum to 1", "ranks": [i.config["r"] for i in ingredients],
            "delta": "sum_i weights[i] * lora_alpha_i / r_i * B_i @ A_i (ranks stacked, peft 'cat')"}
    if any("soup" in i.card for i in ingredients):  # inputs that were soups themselves keep their recipe
        soup["input_soups"] = {str(i.folder): i.card["soup"] for i in ingredients if "soup" in i.card}
    if cfg.mode == "greedy":
        weights, steps, score = greedy(embedder.to(DEVICE), ingredients, records, cfg.metric, cfg.batch_size)
        soup.update(weights=weights, metric=cfg.metric, val=getattr(val, "describe", val.__repr__)(), steps=steps,
                    score=score)
    save_soup(out, ingredients, weights, soup)
    attach(embedder, out, "soup")  # the written folder loads onto its base
    with tracking.tracked(cfg, follow_checkpoint=folders[0]) as loggers:
        tracking.log_results(loggers, {f"soup/weight_{i}": w for i, w in enumerate(weights)}
                             | ({f"soup/{cfg.metric}": soup["score"]} if "score" in soup else {}),
                             tables={"soup/steps": soup.get("steps") or []})
    print(f"lco.soup: {cfg.mode} soup of {len(folders)} adapters, weights "
          f"[{', '.join(f'{w:.4g}' for w in weights)}] (normalised to sum 1), rank {soup['rank']} -> {out}")
    return soup


main = entry("soup", run)


if __name__ == "__main__":
    main()
