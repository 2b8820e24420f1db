"""Learning-rate schedules: linear warmup, then linear (reference) or cosine decay to zero."""

from __future__ import annotations

import logging

from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

log = logging.getLogger(__name__)
SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}


def build_scheduler(optimizer, total_steps: int, name: str = "linear", warmup_steps: int = 100):
    """A per-step LambdaLR. A run shorter than its warmup warms up over a tenth of its steps instead (logged),
    so that it still reaches the peak rate and decays."""
    if name not in SCHEDULES:
        raise ValueError(f"optim.scheduler.name={name!r} is unknown; choose one of {sorted(SCHEDULES)}")
    if warmup_steps >= total_steps:
        log.warning("optim.scheduler.warmup_steps=%d >= %d training steps: warming up over %d steps instead",
                    warmup_steps, total_steps, max(1, total_steps // 10))
        warmup_steps = max(1, total_steps // 10)
    return SCHEDULES[name](optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
