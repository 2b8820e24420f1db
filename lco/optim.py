"""Learning-rate schedules: linear warmup, then linear (reference) or cosine decay to zero."""

from __future__ import annotations

import logging

from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from lco.errors import ConfigError

log = logging.getLogger(__name__)
SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    """The warmup a run of ``total_steps`` gets: ``warmup_steps``, or a tenth of the run if that is not shorter."""
    return warmup_steps if warmup_steps < total_steps else max(1, total_steps // 10)


def build_scheduler(optimizer, total_steps: int, name: str = "linear", warmup_steps: int = 100):
    """A per-step LambdaLR. A run shorter than its warmup warms up over a tenth of its steps instead (logged),
    so that it still reaches the peak rate and decays."""
    if name not in SCHEDULES:
        raise ConfigError(f"optim.scheduler.name={name!r} is unknown; choose one of {sorted(SCHEDULES)}")
    warmup = effective_warmup(warmup_steps, total_steps)
    if warmup != warmup_steps:
        log.warning("optim.scheduler.warmup_steps=%d >= %d training steps: warming up over %d steps instead",
                    warmup_steps, total_steps, warmup)
    return SCHEDULES[name](optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
