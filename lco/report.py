"""``python -m lco.report <sweep dir> [--metric val/r1]``: one table and one bar plot for a finished sweep.

In: a Hydra multirun folder whose job folders each hold ``metrics.json`` (written by ``lco.train``) and
``.hydra/overrides.yaml``. Out: ``<sweep>/report.md`` (one row per run: its overrides, every final metric,
device-hours, trainable parameters) and ``<sweep>/report.png`` (a bar per run for ``--metric``). Overrides shared
by every run are left out of the labels.

Runs with a probe (``probe.json``, written by ``lco.callbacks.Probe``) add a second part: runs that differ only in
``seed=`` form one setting; per setting, the probe metrics before and after (means over seeds) and, for each
retrieval direction, the paired change with its 95% interval and p-value (``lco.analysis.paired``). It goes into
``report.md``, and ``tradeoff.png`` plots cross-modal change against text-retrieval change, one point per setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from lco.analysis.paired import paired_change
from lco.evaluation.toyworld import DIRECTIONS

CROSS = ("i2t_r1", "t2i_r1")


def _overrides(job: Path) -> list[str]:
    """The Hydra overrides a job folder ran with (``.hydra/overrides.yaml``), or [] if it has none."""
    path = job / ".hydra" / "overrides.yaml"
    return (yaml.safe_load(path.read_text()) if path.exists() else None) or []


def _labels(override_lists: list[list[str]]) -> list[str]:
    """Each run's overrides minus those shared by every run (the swept values), joined; "(none)" if empty."""
    shared = set.intersection(*(set(o) for o in override_lists)) if override_lists else set()
    return [" ".join(o for o in overrides if o not in shared) or "(none)" for overrides in override_lists]


def collect(sweep: Path) -> list[dict]:
    """One row per job folder with a ``metrics.json``: ``{"run", "overrides", metric: value, ...}``."""
    rows = []
    for metrics_file in sorted(sweep.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        job = metrics_file.parent
        data = json.loads(metrics_file.read_text())
        rows.append({"run": job.name, "overrides": _overrides(job), **data["after"],
                     "device_hours": data["cost"]["device_hours"], "trainable": data["params"]["trainable"]})
    if not rows:
        raise SystemExit(f"lco.report: no */metrics.json under {sweep}; point it at a multirun folder "
                         "(logs/train/multiruns/<date>_<time>) whose jobs finished.")
    for row, label in zip(rows, _labels([r["overrides"] for r in rows])):
        row["overrides"] = label
    return rows


def settings(sweep: Path) -> dict[str, list[dict]]:
    """Probe results grouped by setting (the overrides that differ between runs, ``seed=`` left out)."""
    files = sorted(sweep.glob("*/probe.json"))
    override_lists = [[o for o in _overrides(f.parent) if not o.startswith("seed=")] for f in files]
    groups: dict[str, list[dict]] = {}
    for label, probe_file in zip(_labels(override_lists), files):
        groups.setdefault(label, []).append(json.loads(probe_file.read_text()))
    return groups


def probe_table(groups: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """Markdown for the probe part of the report, and one summary dict per setting (for the plot)."""
    lines = ["| setting | seeds | " + " | ".join(f"{d} before -> after (change [95% CI], p)" for d in DIRECTIONS)
             + " | alignment | anisotropy img / txt | i2t top caption right on colour / shape / size / position |",
             "|---|---|---|---|---|---|---|---|"]
    summary = []
    for name, probes in groups.items():
        row = {"setting": name}
        cells = [name, str(len(probes))]
        for direction in DIRECTIONS:
            stats = paired_change([p["hits_before"][direction] for p in probes],
                                  [p["hits_after"][direction] for p in probes], probes[0]["query_scenes"][direction])
            before = sum(p["before"][direction] for p in probes) / len(probes)
            row[direction] = stats
            cells.append(f"{before:.3f} -> {before + stats['change']:.3f} ({stats['change']:+.3f} "
                         f"[{stats['ci_low']:+.3f}, {stats['ci_high']:+.3f}], p={stats['p']:.3g}, "
                         f"{stats['scenes_changed']} scenes changed)")
        b, a = ({k: sum(p[when].get(k, float("nan")) for p in probes) / len(probes) for k in probes[0][when]}
                for when in ("before", "after"))
        cells.append(f"{b['alignment']:.3f} -> {a['alignment']:.3f}")
        cells.append(f"{b['anisotropy_image']:.2f} / {b['anisotropy_text']:.2f} -> "
                     f"{a['anisotropy_image']:.2f} / {a['anisotropy_text']:.2f}")
        attributes = ("colour", "shape", "size", "position")
        cells.append(" / ".join(f"{b.get(f'i2t_{x}', float('nan')):.2f}" for x in attributes) + " -> "
                     + " / ".join(f"{a.get(f'i2t_{x}', float('nan')):.2f}" for x in attributes))
        lines.append("| " + " | ".join(cells) + " |")
        summary.append(row)
    return "\n".join(lines) + "\n", summary


def tradeoff_plot(summary: list[dict], path: Path) -> None:
    """Cross-modal R@1 change (i2t, t2i) against text-to-text R@1 change, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5 + 0.18 * len(summary)))
    markers = "osD^v<>phX*"
    for ax, direction in zip(axes, CROSS):
        for i, row in enumerate(summary):
            x, y = row["t2t_r1"], row[direction]
            ax.errorbar(x["change"], y["change"], xerr=[[x["change"] - x["ci_low"]], [x["ci_high"] - x["change"]]],
                        yerr=[[y["change"] - y["ci_low"]], [y["ci_high"] - y["change"]]], fmt=markers[i % 11],
                        capsize=2, alpha=0.8, label=row["setting"])
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("change in t2t R@1 (text retrieval gain)")
        ax.set_ylabel(f"change in {direction.replace('_r1', ' R@1')}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.subplots_adjust(bottom=0.12 + 0.035 * ((len(summary) + 1) // 2), wspace=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    text = f"# Sweep {args.sweep.name}\n\n" + markdown(rows)
    groups = settings(args.sweep)
    if groups:
        table, summary = probe_table(groups)
        text += "\n## Probe: before -> after, paired over seeds and held-out scenes\n\n" + table
        tradeoff_plot(summary, args.sweep / "tradeoff.png")
    out.write_text(text)
    bar_plot(rows, args.metric, args.sweep / "report.png")
    print(out.read_text())
    return out


if __name__ == "__main__":
    main()
