"""The shared shape of lco's entry points (``python -m lco.train|evaluate|analyze|pretrain``).

``entry("train", run)`` returns a Hydra main over ``conf/train.yaml`` that calls ``run(cfg)``. Errors a user can
act on (``lco.errors``: bad config key or value, missing model or data, bad record) print one ``lco: error: ...``
paragraph and exit with status 2 instead of a traceback, also when Hydra's ``instantiate`` wrapped them; so do
Hydra's refusals of the command line (``lco.keys.check_command_line``). A run stopped by SIGTERM
(preemption; ``lco.checkpointing.Preemption`` has saved ``last.ckpt``) prints how to resume and exits with 143.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lco.security import guard_run_folder, note_override_secrets, redact_text

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
# where inference entry points (evaluate, analyze) put the model; training devices come from trainer=
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def user_errors() -> tuple[type[BaseException], ...]:
    """What the CLI answers with one ``lco: error:`` paragraph: lco's own errors (``lco.errors``) and a missing
    file (its message names the path)."""
    from lco.errors import LcoError

    return (LcoError, FileNotFoundError)


def entry(config_name: str, run: Callable[[DictConfig], object]) -> Callable[[], object]:
    def main() -> object:
        """Hydra's refusals of the command line (a key that does not exist, an option that is not one) get lco's
        message before Hydra prints its own advice to append keys with ``+``."""
        from lco.errors import ConfigError
        from lco.keys import check_command_line

        try:
            check_command_line(config_name, sys.argv[1:])
        except ConfigError as err:
            print(redact_text(f"lco: error: {err}"), file=sys.stderr)
            raise SystemExit(2) from None
        return app()

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
    def app(cfg: DictConfig):
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
        if hydra_cfg is not None:
            note_override_secrets(list(hydra_cfg.overrides.task))
        guard_run_folder(hydra_cfg.runtime.output_dir if hydra_cfg else None,
                         Path(hydra_cfg.sweep.dir) / "multirun.yaml" if hydra_cfg and hydra_cfg.mode.name == "MULTIRUN"
                         else None)
        try:
            return run(cfg)
        except SIGTERMException as err:
            print(f"lco: {err}", file=sys.stderr)
            raise SystemExit(143) from None
        except Exception as err:
            known = user_errors()
            cause = err
            while cause is not None and not isinstance(cause, known):
                cause = cause.__cause__  # hydra's instantiate wraps errors raised by targets
            if cause is None:
                raise
            print(redact_text(f"lco: error: {cause}"), file=sys.stderr)
            raise SystemExit(2) from None

    return main
