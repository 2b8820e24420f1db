"""Config checks that run before anything heavy: every ``_target_`` node's keys must be arguments of its target.

Hydra already rejects overrides of keys that do not exist (``model.pth=...``); this catches the rest (keys
added with ``+``, typos inside experiment files) with the file-level key path and the closest valid names.
"""

from __future__ import annotations

import difflib
import inspect

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


class ConfigError(ValueError):
    """A config key or value that cannot work; the message names the key and the fix."""


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
        if key in HYDRA_KEYS or key in params:
            continue
        close = difflib.get_close_matches(str(key), list(params), n=2)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        problems.append(f"{where}.{key} is not an argument of {target}; valid keys: "
                        f"{', '.join(p for p in params if p not in ('self', 'args', 'kwargs'))}.{hint}")


def _walk(node, where: str, problems: list[str]) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_node(node, where, problems)
        for key in node.keys():
            _walk(node._get_node(key), f"{where}.{key}" if where else str(key), problems)
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            _walk(child, f"{where}[{i}]", problems)


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every bad key (all at once), every unresolvable interpolation, and a
    ``model.quantization`` that cannot work (bad value, no CUDA/bitsandbytes, a method training 4-bit weights)."""
    from lco.models.quantization import config_problems

    problems: list[str] = []
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as err:  # noqa: BLE001
        problems.append(f"config does not resolve: {err}")
    _walk(cfg, "", problems)
    problems.extend(config_problems(cfg))
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
