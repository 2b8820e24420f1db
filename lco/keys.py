"""Every key of a composed config is one lco reads: an argument of a ``_target_`` (``lco.config``) or a key that
the chosen options' own YAML files declare (this module), never one a user added by mistake.

Two holes this closes:

- ``+optim.lrr=1e-3`` (Hydra's own advice after a typo) or ``+optim.lr=nan`` adds a key to a node without a
  ``_target_`` that nothing reads, and the run trained at the default. ``undeclared_keys`` compares the composed
  config with the *declared* one: the same config file and group options composed without experiment or debug
  deltas and without the command line's values. A key under a node without ``_target_`` that the declared
  config lacks is refused, with the full path and the closest declared paths (``optim.optimizer.lr``).
  ``callbacks`` takes new named callbacks, and everything under a ``_target_`` is its signature's business.
- ``optim.lrr=1e-3`` (no ``+``) made Hydra stop with its advice to append with ``+``. ``check_command_line`` composes
  the command line first (a sweep's first value per key) and answers Hydra's "Could not override" and "Could not
  find" errors with lco's message.

In: a composed ``DictConfig`` plus Hydra's config name and group choices, or the command line.
Out: a list of problems (``undeclared_keys``), or a ``ConfigError`` (``check_command_line``).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from omegaconf import DictConfig

# keys that moved to the group that reads them (2026-11-30): old path (or prefix) -> new path
MOVED = {"loss.cache_chunk": "step.cache_chunk", "fuse_max_padding": "step.fuse_max_padding",
         "gradient_checkpointing": "module.gradient_checkpointing",
         "max_nonfinite_skips": "module.max_nonfinite_skips", **{f"embed.{key}": f"preprocess.{key}" for key in (
             "max_text_tokens", "image_max_size", "audio_max_seconds", "video_max_frames", "prompter")}}
FREE = {"callbacks"}  # nodes whose children are named by the user (each one a _target_ node)
# deltas and Hydra's own, not passed: experiment/debug fall back to null
SKIP_GROUPS = {"experiment", "debug", "hydra"}


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    """``hydra.compose`` inside a running app, or in a fresh context over lco's conf/ (tests, before the app)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lco.cli import CONF_DIR

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def declared(config_name: str, choices: dict[str, str]) -> DictConfig:
    """The config as the chosen options declare it: the same groups, no experiment/debug, no values."""
    picks = [f"{g}={o}" for g, o in choices.items()
             if g not in SKIP_GROUPS and "/" not in g and "@" not in g and o is not None]
    return _compose(config_name, picks)


def leaf_paths(node, where: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            path = f"{where}.{key}" if where else str(key)
            out += leaf_paths(child, path) if isinstance(child, DictConfig) else [path]
    return out


def moved(key: str) -> str:
    """`` It is now <new path>.`` when ``key`` (or a node above it) moved (``MOVED``), else ``""``."""
    for old, new in MOVED.items():
        if key == old or key.startswith(old + "."):
            return f" It is now {new + key[len(old):]} (it moved to the config group that reads it)."
    return ""


def suggest(key: str, candidates: list[str]) -> str:
    """`` Did you mean a or b?`` for the full paths whose last part is closest to ``key``'s last part, looking
    first under the same top-level node (``optim.lr`` -> ``optim.optimizer.lr``, not ``method.r``)."""
    last, top = key.rsplit(".", 1)[-1], key.split(".", 1)[0]
    for pool in ([c for c in candidates if c.split(".", 1)[0] == top and "." in key], candidates):
        by_last: dict[str, str] = {}
        for path in pool:
            by_last.setdefault(path.rsplit(".", 1)[-1], path)
        close = difflib.get_close_matches(last, list(by_last), n=2, cutoff=0.6)
        if close:
            return f" Did you mean {' or '.join(by_last[c] for c in close)}?"
    return ""


def undeclared_keys(cfg: DictConfig, config_name: str, choices: dict[str, str]) -> list[str]:
    """One problem per key under a node without ``_target_`` that the declared config does not have."""
    clean = declared(config_name, choices)
    paths, problems = leaf_paths(clean), []

    def walk(node, reference, where: str) -> None:
        if not isinstance(node, DictConfig) or not isinstance(reference, DictConfig):
            return
        if "_target_" in node or where in FREE:
            return
        declared_here = set(reference.keys())  # not `key in reference`: that is False for a ??? (missing) value
        for key in node.keys():
            path = f"{where}.{key}" if where else str(key)
            if key not in declared_here:
                valid = ", ".join(str(k) for k in reference.keys())
                problems.append(f"{path} is not a key lco reads (added with +, or by an experiment file); the keys "
                                f"under {where or 'the top level'} are: {valid}.{moved(path) or suggest(path, paths)}")
            else:
                walk(node._get_node(key), reference._get_node(key), path)

    walk(cfg, clean, "")
    return problems


def _first_values(argv: list[str]) -> list[str]:
    """The command line's overrides, a sweep's first value per key, Hydra's own (``hydra...``) left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [a for a in argv if "=" in a and not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    out = []
    for line, override in zip(lines, OverridesParser.create().parse_overrides(lines)):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()), None)
            if first is None:
                continue
            line = f"{override.get_key_element()}={first}"
        out.append(line)
    return out


def check_command_line(config_name: str, argv: list[str]) -> None:
    """Compose ``argv``'s overrides as Hydra will; its refusals become a ``ConfigError`` in lco's words."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    from lco.errors import ConfigError

    try:
        overrides = _first_values(argv)
        _compose(config_name, overrides)
    except OverrideParseException:
        return  # a syntax error: Hydra's own message shows where
    except MissingConfigException as err:
        found = re.search(r"Could not find '([^']+)/([^']+)'", str(err))
        if found is None:
            return
        group, option = found.groups()
        from lco.cli import CONF_DIR

        options = sorted(p.stem for p in Path(CONF_DIR, group).glob("*.yaml"))
        close = difflib.get_close_matches(option, options, n=1)
        raise ConfigError(f"{group}={option} (command line) is not an option of the config group {group}: "
                          f"the options are {', '.join(options)}.{f' Did you mean {close[0]}?' if close else ''}"
                          ) from None
    except ConfigCompositionException as err:
        found = re.search(r"Could not override '([^']+)'", str(err))
        if found is None:
            return
        key = found.group(1)
        from lco.cli import CONF_DIR

        # the command line's group choices (model=tiny_text), without which the keys a typo is close to are unknown
        groups = [o for o in overrides if "=" in o and not o.startswith(("+", "~"))
                  and Path(CONF_DIR, o.split("=", 1)[0]).is_dir()]
        hint = moved(key) or suggest(key, leaf_paths(_compose(config_name, groups)))
        parent = key.rsplit(".", 1)[0] if "." in key else "the top level"
        raise ConfigError(f"{key} (command line) is not a key of the config under {parent}.{hint} "
                          "Appending it with + would only add a key that nothing reads; lco refuses those too."
                          ) from None
