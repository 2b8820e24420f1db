"""``python -m lco.report <sweep dir> [--metric val/r1]``: one table and one bar plot for a finished sweep.

In: a Hydra multirun folder whose job folders each hold ``metrics.json`` (written by ``lco.train``) and
``.hydra/overrides.yaml``. Out: ``<sweep>/report.md`` (one row per run: its overrides, every final metric,
device-hours, trainable parameters) and ``<sweep>/report.png`` (a bar per run for ``--metric``). Overrides shared
by every run are left out of the labels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def collect(sweep: Path) -> list[dict]:
    """One row per job folder with a ``metrics.json``: ``{"run", "overrides", metric: value, ...}``."""
    rows = []
    for metrics_file in sorted(sweep.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job = metrics_file.parent
        data = json.loads(metrics_file.read_text())
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        rows.append({"run": job.name, "overrides": overrides or [], **data["after"],
                     "device_hours": data["cost"]["device_hours"], "trainable": data["params"]["trainable"]})
    if not rows:
        raise SystemExit(f"lco.report: no */metrics.json under {sweep}; point it at a multirun folder "
                         "(logs/train/multiruns/<date>_<time>) whose jobs finished.")
    shared = set.intersection(*(set(r["overrides"]) for r in rows))
    for row in rows:  # keep what differs between runs: the swept values
        row["overrides"] = " ".join(o for o in row["overrides"] if o not in shared) or "(none)"
    return rows


def markdown(rows: list[dict]) -> str:
    columns = ["run", "overrides"] + sorted({k for r in rows for k in r} - {"run", "overrides"})
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_plot(rows: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["overrides"] for r in rows]
    values = [r.get(metric, float("nan")) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.45 * len(rows)))
    ax.barh(range(len(rows)), values)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    for i, value in enumerate(values):
        ax.annotate(f"{value:.3g}", (value, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_title(f"{metric} per run")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m lco.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a Hydra multirun folder")
    parser.add_argument("--metric", default="val/r1", help="metric for the bar plot (default val/r1)")
    args = parser.parse_args(argv)
    rows = collect(args.sweep)
    out = args.sweep / "report.md"
    out.write_text(f"# Sweep {args.sweep.name}\n\n" + markdown(rows))
    bar_plot(rows, args.metric, args.sweep / "report.png")
    print(out.read_text())
    return out


if __name__ == "__main__":
    main()
