"""Config checks that run before anything heavy: every ``_target_`` node's keys must be arguments of its target.

Hydra already rejects overrides of keys that do not exist (``model.pth=...``); this catches the rest (keys
added with ``+``, typos inside experiment files) with the file-level key path and the closest valid names.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from lco.errors import ConfigError
from lco.keys import moved, undeclared_keys

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _check_node(node: DictConfig, where: str, problems: list[str]) -> None:
    target = node.get("_target_")
    try:
        obj = get_object(target)
    except Exception as err:  # noqa: BLE001 - reported with the key path
        problems.append(f"{where}._target_={target!r} cannot be imported ({err}).")
        return
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in node.keys():
        if key in params and str(target).startswith("lco."):
            _check_type(node, key, params[key].annotation, where, problems)
        if key in HYDRA_KEYS or key in params:
            continue
        close = difflib.get_close_matches(str(key), list(params), n=2)
        hint = moved(f"{where}.{key}".lstrip(".")) or (
            f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else "")
        problems.append(f"{where}.{key} is not an argument of {target}; valid keys: "
                        f"{', '.join(p for p in params if p not in ('self', 'args', 'kwargs'))}.{hint}")


# lco's own arguments annotated with a plain scalar type get that type: loss.symmetric=maybe is not True
SCALARS = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def _check_type(node: DictConfig, key: str, annotation, where: str, problems: list[str]) -> None:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    kinds = [k.strip() for k in text.split("|")]
    if any(k not in SCALARS and k != "None" for k in kinds):
        return  # not a plain scalar annotation: nothing to say
    try:
        value = node[key]
    except Exception:  # noqa: BLE001 - unresolvable: reported by check_config
        return
    if value is None and "None" in kinds:
        return
    allowed = tuple(t for k in kinds if k in SCALARS for t in SCALARS[k])
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        problems.append(f"{where}.{key}={value!r} is not valid: it must be {' or '.join(kinds)}.")


def _walk(node, where: str, problems: list[str]) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_node(node, where, problems)
        for key in node.keys():
            _walk(node._get_node(key), f"{where}.{key}" if where else str(key), problems)
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            _walk(child, f"{where}[{i}]", problems)


# Every value a recipe tunes, checked before anything loads: (key, type, low, high, what). int keys take ints only;
# float keys any finite number; ``low``/``high`` bounds are inclusive, ``>x`` is exclusive; a key the composed
# config does not have (method=full has no method.r) or that is null where null is allowed is not checked.
VALUE_RULES = [
    ("data.batch_size", int, 1, None, "triplets per device and step"),
    ("data.val_batch_size", int, 1, None, "validation batch (null: the training batch)"),
    ("data.val_size", int, 0, None, "held-out validation records"),
    ("data.num_workers", int, 0, None, "data loader worker processes"),
    ("data.steps_per_epoch", int, 1, None, "steps per epoch (null: records // global batch)"),
    ("data.shuffle_buffer", int, 1, None, "streamed sources' shuffle buffer"),
    ("data.max_skip_fraction", float, 0, 1, "share of bad rows data.on_error=skip may drop"),
    ("trainer.max_steps", int, -1, None, "optimizer steps (-1: epochs decide; 0 trains nothing)"),
    ("trainer.max_epochs", int, -1, None, "epochs (-1: steps decide; 0 trains nothing)"),
    ("trainer.accumulate_grad_batches", int, 1, None, "batches per optimizer step"),
    ("trainer.log_every_n_steps", int, 1, None, "steps between logged metrics"),
    ("optim.optimizer.lr", float, ">0", None, "the learning rate"),
    ("optim.optimizer.weight_decay", float, 0, None, "weight decay"),
    ("optim.scheduler.warmup_steps", int, 0, None, "linear warmup steps"),
    ("loss.temperature", float, ">0", None, "InfoNCE temperature"),
    ("loss.max_scale", float, ">0", None, "the largest learned logit scale"),
    ("step.fuse_max_padding", float, 1, None, "padding factor up to which text sides share a pass (null: never)"),
    ("method.r", int, 1, None, "LoRA rank"),
    ("method.alpha", float, ">0", None, "LoRA alpha"),
    ("method.dropout", float, 0, "<1", "LoRA dropout"),
    ("preprocess.max_text_tokens", int, 1, None, "tokens kept of each item's text"),
    ("preprocess.image_max_size", int, 28, None, "longest image side in pixels (one 28-pixel merged patch at least)"),
    ("preprocess.audio_max_seconds", float, ">0", None, "seconds of audio kept"),
    ("preprocess.video_max_frames", int, 2, None, "video frames sampled (pairs: 2 at least)"),
    ("preprocess.video_folder_fps", float, ">0", None, "frame rate of frame-folder videos (Qwen3-VL's frame times)"),
    ("module.max_nonfinite_skips", int, 0, None, "NaN/Inf losses skipped before the run stops"),
]


# keys that take one of a few words: (key, allowed values)
CHOICE_RULES = [
    ("model.dtype", ("auto", "float32", "bfloat16", "float16")),
    ("trainer.accelerator", ("auto", "cpu", "gpu", "cuda", "mps", "tpu")),
    ("trainer.precision", ("32-true", "32", 32, "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16", 16,
                           "64-true", "64", 64, "transformer-engine", "transformer-engine-float16")),
    ("data.on_error", ("raise", "skip")),
    ("optim.scheduler.name", ("linear", "cosine")),
    ("embed.pooling", ("last", "mean")),
    ("module.gradient_checkpointing", ("auto", True, False)),
    ("step.pack", ("auto", True, False)),
    ("step.share_prefix", (True, False)),
    ("module.compile", (True, False)),
    ("hub_private", (True, False)),  # lco.export: a public repo only when asked for in so many words
]


def _devices_ok(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1 or value == -1
    if isinstance(value, str):
        return value == "auto" or value == "-1" or bool(re.fullmatch(r"\d+(,\s*\d+)*,?", value.strip()))
    return isinstance(value, ListConfig | list) and len(value) > 0 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _bound_ok(value: float, bound, upper: bool) -> bool:
    if bound is None:
        return True
    if isinstance(bound, str):  # ">0" / "<1": exclusive
        limit = float(bound[1:])
        return value < limit if upper else value > limit
    return value <= bound if upper else value >= bound


def _describe(kind, low, high) -> str:
    parts = [f"{low[0]} {low[1:]}" if isinstance(low, str) else f">= {low}" if low is not None else "",
             f"{high[0]} {high[1:]}" if isinstance(high, str) else f"<= {high}" if high is not None else ""]
    return f"{'an integer' if kind is int else 'a finite number'} {' and '.join(p for p in parts if p)}".strip()


def value_problems(cfg: DictConfig) -> list[str]:
    """One message per key of ``VALUE_RULES`` whose value has the wrong type, is not finite, or is out of range,
    and per key of ``CHOICE_RULES`` whose value is not one of its words."""
    problems = []
    for key, kind, low, high, what in VALUE_RULES:
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # noqa: BLE001 - unresolvable interpolations are reported by check_config
            continue
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        typed = number and (kind is not int or isinstance(value, int))
        ok = typed and math.isfinite(value) and _bound_ok(value, low, False) and _bound_ok(value, high, True)
        if not ok:
            problems.append(f"{key}={value!r} is not valid: {what} must be {_describe(kind, low, high)}.")
    devices = OmegaConf.select(cfg, "trainer.devices", default=None, throw_on_missing=False)
    if devices is not None and not _devices_ok(devices):
        problems.append(f"trainer.devices={devices!r} is not valid: use auto, a count >= 1, -1 (all), or a list of "
                        "device indices ([0, 1] or \"0,1\").")
    for key, allowed in CHOICE_RULES:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            problems.append(f"{key}={value!r} is not valid: use one of {', '.join(dict.fromkeys(map(str, allowed)))}."
                            + (f" Did you mean {close[0]}?" if close else ""))
    return problems


def _undeclared(cfg: DictConfig) -> list[str]:
    """``lco.keys.undeclared_keys`` for the running app's config (needs Hydra's config name and choices)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not HydraConfig.get().job.config_name:
        return []
    hydra_cfg = HydraConfig.get()
    return undeclared_keys(cfg, hydra_cfg.job.config_name, dict(hydra_cfg.runtime.choices))


def _prefix_problems(cfg: DictConfig) -> list[str]:
    """``step.share_prefix=true`` with what cannot carry it: activation checkpointing (a checkpointed layer drops
    the prefix's keys and values) or an attention kernel that takes no 4-D mask (``lco/step/prefix.py``)."""
    from lco.step.prefix import MASKED_ATTENTION

    if OmegaConf.select(cfg, "step.share_prefix", default=None, throw_on_missing=False) is not True:
        return []
    problems = []
    if OmegaConf.select(cfg, "module.gradient_checkpointing", default=None, throw_on_missing=False) is True:
        problems.append("step.share_prefix=true and module.gradient_checkpointing=true cannot be combined: a "
                        "checkpointed decoder layer drops the shared prefix's keys and values. Set "
                        "module.gradient_checkpointing=auto (off when sharing) or false, or step.share_prefix=false.")
    attention = OmegaConf.select(cfg, "model.attn_implementation", default=None, throw_on_missing=False)
    if attention is not None and attention not in MASKED_ATTENTION:
        problems.append(f"step.share_prefix=true needs attention that takes a 4-D mask ({', '.join(MASKED_ATTENTION)})"
                        f", not model.attn_implementation={attention}. Set model.attn_implementation=sdpa or "
                        "step.share_prefix=false.")
    return problems


def _source_prompt_problems(cfg: DictConfig) -> list[str]:
    """``preprocess.source_prompts``: each entry well formed (``SourcePrompt.parse``) and, where the config has
    data sources, named after one of them."""
    from lco.prompts import SourcePrompt

    prompts = OmegaConf.select(cfg, "preprocess.source_prompts") or {}
    sources = OmegaConf.select(cfg, "data.sources")
    problems = []
    for name, spec in prompts.items():
        try:
            SourcePrompt.parse(str(name), spec)
        except ConfigError as err:
            problems.append(str(err))
        if sources is not None and name not in sources:
            problems.append(f"preprocess.source_prompts.{name} names no data source; the sources are "
                            f"{', '.join(map(str, sources))}.")
    return problems


def _family_problems(cfg: DictConfig) -> list[str]:
    """``method.experts=true`` (LoRA on MoE expert weights) on a family whose decoder has no routed experts, or with
    LoRA dropout (peft's parameter LoRA has none); packing or a shared prefix on a linear-attention decoder."""
    from lco.methods.lora import EXPERTS_DROPOUT
    from lco.models.families import FAMILIES
    from lco.step import recurrent_problems

    family = OmegaConf.select(cfg, "model.family", default=None, throw_on_missing=False)
    problems = []
    if family in FAMILIES and FAMILIES[family].recurrent:
        problems.extend(recurrent_problems(family, OmegaConf.select(cfg, "step.pack", default=None),
                                           OmegaConf.select(cfg, "step.share_prefix", default=None)))
    if OmegaConf.select(cfg, "method.experts", default=None, throw_on_missing=False) is not True:
        return problems
    if family in FAMILIES and not FAMILIES[family].moe:
        moe = ", ".join(name for name, f in FAMILIES.items() if f.moe)
        problems.append(f"method.experts=true adds LoRA on routed MoE experts, but model.family={family} has a "
                        f"dense decoder. Set method.experts=false, or pick an MoE family ({moe}).")
    dropout = OmegaConf.select(cfg, "method.dropout", default=0, throw_on_missing=False)
    if dropout:
        problems.append(EXPERTS_DROPOUT.format(dropout=dropout))
    return problems


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every bad key (all at once: not an argument of its ``_target_``, or not declared
    by the chosen options' YAML, ``lco.keys``), every unresolvable interpolation, every value out of type or range
    (``VALUE_RULES``, ``CHOICE_RULES``, scalar annotations), and a ``model.quantization`` that cannot work (bad
    value, no CUDA/bitsandbytes, a method training 4-bit weights)."""
    from lco.models.quantization import config_problems

    problems: list[str] = []
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as err:  # noqa: BLE001
        problems.append(f"config does not resolve: {err}")
    _walk(cfg, "", problems)
    problems.extend(_undeclared(cfg))
    problems.extend(value_problems(cfg))
    problems.extend(config_problems(cfg))
    problems.extend(_prefix_problems(cfg))
    problems.extend(_family_problems(cfg))
    problems.extend(_source_prompt_problems(cfg))
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems)
                          + "\nFix the keys above (command line or conf/ files); nothing was loaded.")


def check_modalities(data_modalities: set[str], family_name: str, model_path: str, what: str = "the data") -> None:
    """Fail before loading weights when the data (or ``what``) has a modality the backbone has no tower for."""
    from lco.models.families import get_family

    family = get_family(family_name)
    missing = sorted(set(data_modalities) - set(family.modalities))
    if missing:
        raise ConfigError(
            f"{what} has {', '.join(missing)} items but model.family={family_name} ({model_path}) handles only "
            f"{', '.join(family.modalities)}. Pick a model with that tower (model=qwen_omni or tiny_omni for audio) "
            "or drop those sources."
        )


def check_launch(trainer_cfg: DictConfig) -> None:
    """Refuse a local Hydra multirun whose jobs start several processes (DDP on >1 device).

    Lightning's DDP launcher re-runs the command line in every child rank, so with ``-m`` each rank would start
    the whole sweep again. Run such jobs one per command (a shell loop) or through a cluster launcher plugin.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    local = str(hydra_cfg.launcher.get("_target_", "")).endswith("BasicLauncher")
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1)
    several = str(devices) not in ("1", "auto") or int(nodes or 1) > 1
    if hydra_cfg.mode == RunMode.MULTIRUN and local and several:
        raise ConfigError(
            f"a local multirun (-m) cannot run jobs on several devices (trainer.devices={devices}, "
            f"trainer.num_nodes={nodes}): Lightning's DDP launcher would re-start the whole sweep in every rank. "
            "Run one command per job (see experiments/ablation_methods/README.md), use trainer=gpu for "
            "single-device jobs, or a cluster launcher (hydra/launcher=submitit_slurm)."
        )
