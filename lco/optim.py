"""Learning-rate schedules: linear warmup, then linear (reference) or cosine decay to zero."""

from __future__ import annotations

from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}


def build_scheduler(optimizer, total_steps: int, name: str = "linear", warmup_steps: int = 100):
    """A per-step LambdaLR. ``warmup_steps`` is capped at ``total_steps`` so short runs still decay."""
    if name not in SCHEDULES:
        raise ValueError(f"optim.scheduler.name={name!r} is unknown; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](optimizer, num_warmup_steps=min(warmup_steps, total_steps), num_training_steps=total_steps)
