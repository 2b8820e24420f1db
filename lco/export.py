"""``python -m lco.export checkpoint=<run>/adapter out=DIR [sentence_transformers=true] [overwrite=false]
[push_to_hub=org/name]``.

In: the folder an lco run wrote (``<run>/adapter``, any method: a peft adapter for ``lora``, the same plus the trained
vision tower (``modules_to_save``) for ``clip``, a whole model for ``full``, ``head.safetensors`` for
``linear_probe``), with its ``lco_embedding.json`` card; the base model it names must be loadable.
Out: ``out``, a folder that transformers loads with no lco code: the family's model class with the trained weights
merged in (peft ``merge_and_unload``; Omni: only the thinker) as safetensors, config, tokenizer, processor parts,
``chat_template.jinja`` (the base template, plus an ``embedding=True`` branch that renders lco's prompt: media,
then the text and the modality's suffix, optional system turn), ``README.md`` (prompts, pooling, dtype, code), and
``lco_embedding.json`` (method ``full``: ``load_embedder(out)`` loads the folder itself). ``linear_probe`` keeps its
head in ``head.safetensors`` (and a ST ``Dense`` module); plain transformers users apply it as the card shows.
With ``sentence_transformers=true`` the same folder is a sentence-transformers (>= 6) model: ``modules.json``, a
Transformer whose ``processing_kwargs`` call the chat template with ``embedding=True``, last-token Pooling,
[Dense], Normalize; the tokenizer pads on the left. Everything is written beside ``out`` and swapped in when
complete (``lco.checkpointing.atomic_folder``). A checkpoint that is missing, incomplete or unreadable, a base it does not fit, or an ``out``
that is not empty (without ``overwrite=true``) stops with one ``ConfigError`` before anything is written.
``push_to_hub=org/name`` then uploads ``out`` to that model repo (created ``private`` by default; ``lco/hub.py``);
a bad repo id, an unreachable hub or a missing token stop the command before the export starts.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from lco import card as cards
from lco.checkpointing import atomic_folder
from lco.cli import entry
from lco.config import check_config
from lco.errors import ConfigError
from lco.provenance import environment

FIX = "point checkpoint= at the adapter/ folder of a finished lco run (logs/train/runs/<date>_<time>/adapter)"
ADAPTER = ("adapter_config.json", "adapter_model.safetensors")
METHOD_FILES = {"lora": ADAPTER, "clip": ADAPTER, "full": ("config.json",), "linear_probe": ("head.safetensors",)}
DTYPES = ("float32", "bfloat16", "float16")
ST_POOLING = {"last": "lasttoken", "mean": "mean"}
EXAMPLE = "A man is playing a guitar."
PROBES = [EXAMPLE, "Two dogs run across a snowy field.", ""]
TEMPLATE_PREFIX = Path(__file__).parent / "models" / "embedding_prompt.jinja"  # the chat template's embedding branch
CARD_TEMPLATE = Path(__file__).parent / "models" / "export_card.md.jinja"  # the exported README.md
HOW = {"lora": "The LoRA adapter is merged into the base weights (peft `merge_and_unload`).",
       "clip": "The LoRA adapter is merged into the base weights, and the trained vision tower replaces the base's "
               "(peft `merge_and_unload`).",
       "full": "The fully fine-tuned weights are exported as trained.",
       "linear_probe": "The backbone is the frozen base; the trained linear head is `head.safetensors`."}


def read_checkpoint(folder: Path) -> dict:
    """The checkpoint's card, once the method's files are found and every safetensors file reads whole."""
    from safetensors import safe_open

    card = cards.read(folder, f"checkpoint={folder}")
    weights = sorted(folder.glob("*.safetensors"))
    missing = [name for name in METHOD_FILES[card["method"]] if not (folder / name).is_file()]
    if missing or not weights:
        lacking = ", ".join(missing or ["*.safetensors"])
        raise ConfigError(f"checkpoint={folder} (method={card['method']}) lacks {lacking}: the run did not finish "
                          f"writing it, or files were removed. {FIX}.")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as handle:  # checks the header against the file's length
                handle.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise ConfigError(f"checkpoint={folder}: {path.name} cannot be read ({err}); the file is damaged or cut "
                              "short. Copy it again from the run folder, or retrain.") from None
    return card


def check_out(out: Path, checkpoint: Path, overwrite: bool) -> None:
    if out.resolve() == checkpoint.resolve() or out.resolve() in checkpoint.resolve().parents:
        raise ConfigError(f"out={out} would replace the checkpoint {checkpoint} it is exported from: choose another "
                          "folder.")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file: give the path of a folder to create.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"out={out} already exists and is not empty: choose a new folder, or add overwrite=true to "
                          "replace it (the old folder is swapped out only once the export is complete).")


def resolve_dtype(dtype: str, card: dict, checkpoint: Path) -> str:
    """``auto``: the dtype the base (``full``: the checkpoint) stores its weights in; float32 if it names none."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ConfigError(f"dtype={dtype!r}: use auto, {', '.join(DTYPES)}.")
        return dtype
    from transformers import AutoConfig

    from lco.models.backbone import resolve_path

    where, kwargs = resolve_path(str(checkpoint) if card["method"] == "full" else card["base_model"])
    stored = getattr(AutoConfig.from_pretrained(where, **kwargs), "dtype", None)
    return str(stored).removeprefix("torch.") if stored else "float32"


def load_source(checkpoint: Path, card: dict, dtype: str):
    from lco.errors import BackboneUnavailable
    from lco.models.loading import load_embedder

    try:
        return load_embedder(checkpoint, dtype=dtype)
    except (BackboneUnavailable, ConfigError):
        raise
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise ConfigError(f"checkpoint={checkpoint} does not load onto base_model={card['base_model']!r} (family "
                          f"{card['family']}): {' '.join(str(err).split())[:600]}. Export the folder a run wrote, "
                          "unchanged, with the base it was trained on.") from err


def embedding_template(template, suffixes: dict, system: str | None) -> str:
    """The base chat template behind a prefix that, given ``embedding=True``, rewrites the last user turn as lco."""
    if not isinstance(template, str):
        raise ConfigError("the checkpoint's processor has no single chat template (none, or several by name); "
                          "lco.export needs the one lco rendered its prompts with.")
    literal = lambda value: json.dumps(value, ensure_ascii=False)  # noqa: E731 - JSON strings are Jinja literals
    return (TEMPLATE_PREFIX.read_text().replace("@SUFFIXES@", literal(suffixes))
            .replace("@SYSTEM@", "none" if system is None else literal(system)) + template)


def check_prompts(embedder) -> dict[str, str]:
    """Render one item per modality with the new template and lco's ``Preprocessor``: they must be equal. Returns
    the rendered prompts (for the card)."""
    modalities = {"text": {"text": EXAMPLE}, "image": {"image": "x"}, "mixed": {"image": "x", "text": EXAMPLE},
                  "audio": {"audio": "x"}, "video": {"video": "x"}}
    processor, shown = embedder.backbone.processor, {}
    for name, item in modalities.items():
        if any(m in item and m not in embedder.family.modalities for m in ("image", "audio", "video")):
            continue
        content = [{"type": m} for m in ("image", "video", "audio") if m in item]
        content.append({"type": "text", "text": item.get("text", "")})
        got = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                            add_generation_prompt=True, embedding=True)
        shown[name] = embedder.preprocessor.prompts([item])[0]
        if got != shown[name]:
            raise ConfigError(f"the exported chat template renders a {name} item as {got!r}, but lco renders "
                              f"{shown[name]!r}: this checkpoint's chat template lays out user turns in a way "
                              "lco.export cannot wrap. Nothing was written.")
    return shown


def prompt_overhead(processor) -> int:
    """Tokens a text item's prompt adds around its text (template + suffix), for sentence-transformers' max_length."""
    tokenizer = getattr(processor, "tokenizer", processor)
    rendered = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "0"}]}],
                                             tokenize=False, add_generation_prompt=True, embedding=True)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    return count(rendered) - count("0")


def write_sentence_transformers(folder: Path, card: dict, hidden: int, head: dict | None, max_length: int) -> None:
    """modules.json and the configs of Transformer (root), Pooling, [Dense], [Normalize], as sentence-transformers 6
    saves them; the Transformer is told to render every input through the chat template with ``embedding=True``."""
    from safetensors.torch import save_file

    forward = {"method": "forward", "method_output_name": "last_hidden_state"}
    files = {"sentence_bert_config.json": {
        "transformer_task": "feature-extraction", "module_output_name": "token_embeddings", "unpad_inputs": False,
        "modality_config": {"text": forward, "message": {**forward, "format": "structured"}},
        "processing_kwargs": {"chat_template": {"add_generation_prompt": True, "embedding": True},
                              "text": {"max_length": max_length}}}}
    modules = [("", "base.modules.transformer.Transformer"),
               ("1_Pooling", "sentence_transformer.modules.pooling.Pooling")]
    files["1_Pooling/config.json"] = {"embedding_dimension": hidden, "pooling_mode": ST_POOLING[card["pooling"]],
                                      "include_prompt": True}
    io = {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}
    if head is not None:
        modules.append(("2_Dense", "base.modules.dense.Dense"))
        files["2_Dense/config.json"] = {"in_features": head["weight"].shape[1], "out_features": head["weight"].shape[0],
                                        "bias": "bias" in head, **io,
                                        "activation_function": "torch.nn.modules.linear.Identity"}
    if card["normalize"]:
        modules.append((f"{len(modules)}_Normalize", "base.modules.normalize.Normalize"))
        files[f"{modules[-1][0]}/config.json"] = io
    files["modules.json"] = [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.{kind}"}
                             for i, (path, kind) in enumerate(modules)]
    files["config_sentence_transformers.json"] = {"model_type": "SentenceTransformer", "prompts": {},
                                                  "default_prompt_name": None, "similarity_fn_name": "cosine"}
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2))
    if head is not None:
        save_file({f"linear.{k}": v for k, v in head.items()}, str(folder / "2_Dense" / "model.safetensors"))


def model_card(card: dict, info: dict, prompts: dict[str, str]) -> str:
    """README.md (from ``models/export_card.md.jinja``): what the folder holds, the exact prompts, the pooling, and
    code that embeds with plain transformers, sentence-transformers and lco."""
    import jinja2

    from lco.models.families import get_family

    family = get_family(card["family"])
    template = jinja2.Template(CARD_TEMPLATE.read_text(), keep_trailing_newline=True)
    return template.render(card={"image_max_size": 700, "system_prompt": None, **card}, prompts=prompts,
                           example=EXAMPLE, cls=family.model_class, media="image" in family.modalities,
                           last=card["pooling"] == "last", n=card["max_text_tokens"], **info)


def export(checkpoint: str | Path, out: str | Path, sentence_transformers: bool = True, overwrite: bool = False,
           dtype: str = "auto", verify: bool = True) -> dict:
    """Write the export of ``checkpoint`` to ``out`` (see the module docstring); returns what was done."""
    from peft import PeftModel

    checkpoint, out = Path(checkpoint), Path(out)
    card = read_checkpoint(checkpoint)
    check_out(out, checkpoint, overwrite)
    dtype = resolve_dtype(dtype, card, checkpoint)
    embedder = load_source(checkpoint, card, dtype).eval()
    reference = embedder.encode(PROBES) if verify else None
    processor, tokenizer = embedder.backbone.processor, embedder.backbone.tokenizer
    processor.chat_template = tokenizer.chat_template = embedding_template(
        processor.chat_template, card["prompt_suffixes"], card.get("system_prompt"))
    tokenizer.padding_side = "left"
    prompts = check_prompts(embedder)
    head = None if isinstance(embedder.head, torch.nn.Identity) else {
        k: v.detach().float().cpu().contiguous() for k, v in embedder.head.state_dict().items()}
    model = embedder.model.merge_and_unload() if isinstance(embedder.model, PeftModel) else embedder.model
    info = {"name": out.name, "how": HOW[card["method"]], "dtype": dtype, "head": head is not None,
            "st": sentence_transformers,
            "dim": embedder.out_dim,
            "max_length": prompt_overhead(processor) + card["max_text_tokens"]}
    exported = {**card, "method": "linear_probe" if head is not None else "full",
                "exported": {"from": str(checkpoint.resolve()), "method": card["method"], "dtype": dtype,
                             "sentence_transformers": sentence_transformers, "provenance": environment()}}
    if head is not None:  # the backbone is the folder itself ("."), wherever the export is moved
        exported["base_model"] = "."
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if head is not None:
            from safetensors.torch import save_file

            save_file(head, str(tmp / "head.safetensors"))
        if sentence_transformers:
            write_sentence_transformers(tmp, card, embedder.hidden_size, head, info["max_length"])
        (tmp / "README.md").write_text(model_card(card, info, prompts))
        cards.write(tmp, exported)
    del embedder, model
    gc.collect()
    result = {"out": str(out), "method": card["method"], "dtype": dtype,
              "files": sorted(p.name for p in out.iterdir())}
    if verify:
        from lco.models.loading import load_embedder

        result["max_deviation"] = float((load_embedder(out, dtype=dtype).encode(PROBES) - reference).abs().max())
    return result


def run(cfg: DictConfig) -> dict:
    from lco.hub import check_push, push_folder

    check_config(cfg)
    if cfg.push_to_hub:  # offline, unreachable or no token: stop before any work
        check_push(cfg.push_to_hub)
    result = export(cfg.checkpoint, cfg.out, cfg.sentence_transformers, cfg.overwrite, cfg.dtype, cfg.verify)
    print(f"lco.export: {result['method']} checkpoint {cfg.checkpoint} -> {result['out']} ({result['dtype']}; "
          f"{', '.join(result['files'])})")
    if "max_deviation" in result:
        print(f"  reloaded with lco: largest embedding difference from the checkpoint {result['max_deviation']:.2e}")
    if cfg.push_to_hub:
        result["url"] = push_folder(result["out"], cfg.push_to_hub, cfg.hub_private,
                                    f"lco.export of {Path(cfg.checkpoint).resolve().name} ({result['method']})")
        print(f"  pushed to {result['url']}")
    return result


main = entry("export", run)


if __name__ == "__main__":
    main()
