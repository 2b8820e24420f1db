"""``python -m lco.analyze``: layer-wise anisotropy and mutual-kNN kernel alignment for paired data.

For the base model (``model=``) and every folder in ``checkpoints``: embed both sides of each pair at every
decoder layer, then per layer compute the anisotropy of each side and their mutual-kNN alignment (``k``).
Writes ``analysis.csv`` (checkpoint, layer, anisotropy_anchor, anisotropy_positive, alignment) and one line
plot per metric (``<metric>.png``, a line per checkpoint) to the run folder; with ``logger=wandb`` also the table,
the plots and the last layer's metrics as a W&B run (job_type analyze) in the group of the first checkpoint's run.
"""

from __future__ import annotations

import csv
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from lco import tracking
from lco.analysis.layers import layer_states
from lco.analysis.metrics import anisotropy, mutual_knn_alignment
from lco.cli import DEVICE, entry
from lco.config import check_config
from lco.models.embedder import configured
from lco.models.loading import load_embedder

METRICS = ("anisotropy_anchor", "anisotropy_positive", "alignment")


def analyse(embedder, records: list[dict], k: int, batch_size: int) -> list[dict]:
    """One row per layer: ``{"layer", "anisotropy_anchor", "anisotropy_positive", "alignment"}``."""
    anchors = layer_states(embedder, [r["anchor"] for r in records], batch_size)
    positives = layer_states(embedder, [r["positive"] for r in records], batch_size)
    return [{"layer": layer, "anisotropy_anchor": anisotropy(a), "anisotropy_positive": anisotropy(p),
             "alignment": mutual_knn_alignment(a, p, k)} for layer, (a, p) in enumerate(zip(anchors, positives))]


def plot(rows: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in dict.fromkeys(r["checkpoint"] for r in rows):
        mine = [r for r in rows if r["checkpoint"] == name]
        ax.plot([r["layer"] for r in mine], [r[metric] for r in mine], marker="o", label=name)
    ax.set_xlabel("decoder layer (last = final norm)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: DictConfig) -> list[dict]:
    check_config(cfg)
    records = instantiate(cfg.pairs).load()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    embedders = [("base", lambda: configured(cfg).to(DEVICE))]
    embedders += [(str(c), lambda c=c: load_embedder(c, device=DEVICE)) for c in cfg.checkpoints]
    for name, make in embedders:
        embedder = make().eval()
        rows += [{"checkpoint": name, **row} for row in analyse(embedder, records, cfg.k, cfg.batch_size)]
        del embedder
    with (out / "analysis.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["checkpoint", "layer", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    for metric in METRICS:
        plot(rows, metric, out / f"{metric}.png")
    with tracking.tracked(cfg, follow_checkpoint=cfg.checkpoints[0] if cfg.checkpoints else None) as loggers:
        final = {f"{r['checkpoint']}/{m}": r[m] for r in rows if r["layer"] == rows[-1]["layer"] for m in METRICS}
        tracking.log_results(loggers, final, tables={"analysis": rows},
                             images={m: out / f"{m}.png" for m in METRICS})
    print(f"lco.analyze: {len(rows)} rows -> {out / 'analysis.csv'}")
    return rows


main = entry("analyze", run)


if __name__ == "__main__":
    main()
