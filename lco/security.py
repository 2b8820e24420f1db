"""Keeping secrets out of run folders: hub tokens and W&B keys never reach logs, saved configs or checkpoints.

Secrets are the values of the environment variables in ``SECRET_ENV`` and of any variable whose name says it is
one (``*_TOKEN``, ``*_API_KEY``, ``*SECRET*``, ``*PASSWORD*``), 8 characters or longer, and those typed on the
command line: hub tokens (``hf_...``) anywhere in an override, and the value of an override whose key names a
secret. lco's entry points
(``lco.cli.entry``) call ``guard_run_folder`` once Hydra has made the run folder: log records pass through a
filter that masks secret values, and Hydra's ``.hydra/*.yaml`` copies of the command line are rewritten masked.
``lco.train`` saves ``config.yaml`` through ``redact``, which also masks any config value whose key names a
secret (``token``, ``api_key``, ``password``...), whatever its value. Checkpoints hold tensors, loop counters and
RNG states only (``lco.train`` saves no hyperparameters), so no config value reaches them.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "WANDB_API_KEY")
_SECRET_NAME = re.compile(r"(TOKEN|API_?KEY|SECRET|PASSWORD|PASSWD)", re.I)
SECRET_KEY = re.compile(r"(^|_)(token|api_?key|secret|password|passwd)$", re.I)  # config keys
MASK = "***"


# secrets typed on the command line rather than kept in the environment: hub tokens by their shape, and the value
# of any override whose key names a secret (``+model.token=...``); ``note_override_secrets`` records them
HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_typed: set[str] = set()


def note_override_secrets(overrides: list[str]) -> None:
    """Remember the secrets in command-line ``overrides`` (``key=value`` strings) for every later redaction."""
    for line in overrides:
        key, _, value = line.partition("=")
        if SECRET_KEY.search(key.lstrip("+~").rsplit(".", 1)[-1]) and value.strip():
            _typed.add(value.strip())
        _typed.update(HUB_TOKEN.findall(line))


def secret_values() -> list[str]:
    """The secret values in this process's environment and typed overrides, longest first (so overlapping ones
    mask whole)."""
    values = {v for k, v in os.environ.items() if (k in SECRET_ENV or _SECRET_NAME.search(k)) and len(v) >= 8}
    return sorted(values | _typed, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, MASK)
    return text


def redact(node, secrets: list[str] | None = None):
    """A plain config container (dicts, lists, scalars) with secret values and secret-named keys masked."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(node, dict):
        return {k: MASK if SECRET_KEY.search(str(k)) and node[k] not in (None, "") else redact(node[k], secrets)
                for k in node}
    if isinstance(node, list):
        return [redact(v, secrets) for v in node]
    return redact_text(node, secrets) if isinstance(node, str) else node


class RedactingFilter(logging.Filter):
    """Masks ``secrets`` (read from the environment once, not per record) in every record a handler writes
    (message and arguments rendered first, and tracebacks)."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact_text(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:  # tracebacks too: render once, masked
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        return True


def guard_run_folder(folder: str | Path | None, sweep_file: str | Path | None = None) -> None:
    """Install ``RedactingFilter`` on every handler of every logger (Hydra's console and ``<task>.log``, Lightning's
    own) and rewrite ``folder/.hydra/*.yaml`` (Hydra's record of the command line) and a multirun's
    ``sweep_file`` (its ``multirun.yaml``) with secret values masked."""
    secrets = secret_values()
    if not secrets:
        return
    loggers = [logging.getLogger()] + [v for v in logging.root.manager.loggerDict.values()
                                       if isinstance(v, logging.Logger)]  # some (Lightning's) do not propagate
    for handler in {h for logger in loggers for h in logger.handlers}:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(secrets))
    if folder is None:
        return
    for path in [*Path(folder, ".hydra").glob("*.yaml"), *([Path(sweep_file)] if sweep_file else [])]:
        if not path.is_file():
            continue
        text = path.read_text()
        if (masked := redact_text(text, secrets)) != text:
            path.write_text(masked)
