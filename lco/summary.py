"""What a finished run reports: the printed summary, its cost, and ``metrics.json`` (read by ``lco.report``)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table


def print_summary(module, before: dict, after: dict, out: Path, trainer) -> None:
    counts = module.parameter_counts()
    losses = [float(loss) for loss in module.history["train/loss"]]
    table = Table(title="lco run summary", show_header=True)
    table.add_column("what")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    if losses:
        k = max(1, min(10, len(losses) // 5))
        table.add_row("train loss (mean of first/last %d steps)" % k,
                      f"{sum(losses[:k]) / k:.4f}", f"{sum(losses[-k:]) / k:.4f}")
    for key in sorted(k for k in after if k.startswith("val/")):
        if key in after:
            table.add_row(key, f"{before[key]:.4f}" if key in before else "-", f"{after[key]:.4f}")
    table.add_row("trainable / frozen params", "", f"{counts['trainable']:,} / {counts['frozen']:,}")
    table.add_row("optimizer steps", "", str(trainer.global_step))
    console = Console()
    console.print(table)
    console.print(f"outputs: {out}")


def record_cost(trainer, wall_seconds: float) -> dict[str, float]:
    """Cost of the fit like the paper's GPU-hours column: wall time x devices (all ranks, all nodes)."""
    cost = {"wall_seconds": wall_seconds, "devices": float(trainer.world_size),
            "device_hours": wall_seconds * trainer.world_size / 3600.0}
    for logger in trainer.loggers:
        logger.log_metrics({f"cost/{k}": v for k, v in cost.items()}, step=trainer.global_step)
        logger.save()
    return cost


def write_metrics(path: Path, before: dict, after: dict, cost: dict, params: dict, method: str) -> None:
    """``{"method", "before": {...}, "after": {...}, "cost": {...}, "params": {...}}`` as JSON."""
    path.write_text(json.dumps({"method": method, "before": before, "after": after, "cost": cost,
                                "params": params}, indent=2))
