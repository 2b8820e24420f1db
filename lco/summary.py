"""The short end-of-run summary printed by ``lco.train``."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def print_summary(module, before: dict, after: dict, out: Path, trainer) -> None:
    counts = module.parameter_counts()
    losses = module.history["train/loss"]
    table = Table(title="lco run summary", show_header=True)
    table.add_column("what")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    if losses:
        k = max(1, min(10, len(losses) // 5))
        table.add_row("train loss (mean of first/last %d steps)" % k,
                      f"{sum(losses[:k]) / k:.4f}", f"{sum(losses[-k:]) / k:.4f}")
    for key in ("val/loss", "val/r1", "val/r5"):
        if key in after:
            table.add_row(key, f"{before[key]:.4f}" if key in before else "-", f"{after[key]:.4f}")
    table.add_row("trainable / frozen params", "", f"{counts['trainable']:,} / {counts['frozen']:,}")
    table.add_row("optimizer steps", "", str(trainer.global_step))
    console = Console()
    console.print(table)
    console.print(f"outputs: {out}")
