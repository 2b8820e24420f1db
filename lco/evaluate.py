"""``python -m lco.evaluate benchmark=mieb_lite checkpoint=<run>/adapter``: mteb benchmarks on an lco embedder.

Order: select the tasks, check their datasets are available (offline: fail at once, naming them), load the
embedder (a trained adapter folder, or the base ``model=``), run ``mteb.evaluate``. Writes mteb's result files
under ``<run folder>/mteb/results/<name>/<revision>/`` and ``summary.md`` / ``summary.json`` (mean main score
per task category and over all tasks). With ``logger=wandb`` the means and the table go to a W&B run (job_type
evaluate) in the group, and under the name, of the training run that wrote the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from lco import tracking
from lco.cli import DEVICE, entry
from lco.config import check_config
from lco.errors import ConfigError
from lco.evaluation.benchmarks import check_available, skip_self_matches, summarize


def _markdown(rows: list[dict]) -> str:
    lines = ["| category | tasks | mean main score |", "|---|---|---|"]
    lines += [f"| {r['category']} | {r['tasks']} | {r['mean_main_score']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> list[dict]:
    import mteb

    from lco.evaluation.mteb_encoder import MtebEncoder
    from lco.models.embedder import configured
    from lco.models.loading import load_embedder

    check_config(cfg)
    if cfg.dim is not None and (isinstance(cfg.dim, bool) or not isinstance(cfg.dim, int) or cfg.dim < 1):
        raise ConfigError(f"dim={cfg.dim!r} is not valid: a number of leading dimensions >= 1 (a Matryoshka model's "
                          "loss.matryoshka_dims), or null for all.")
    tasks = instantiate(cfg.benchmark, task=cfg.task)
    check_available(tasks)
    skip_self_matches(tasks)
    if cfg.checkpoint:
        embedder = load_embedder(cfg.checkpoint, device=DEVICE)
        name = f"lco/{Path(cfg.checkpoint).resolve().parent.name}"
    else:
        embedder = configured(cfg).to(DEVICE)
        name = f"lco-base/{cfg.model.path}"
    out = Path(cfg.paths.output_dir)
    with tracking.tracked(cfg, follow_checkpoint=cfg.checkpoint) as loggers:
        encoder = MtebEncoder(embedder, name=name + (f"-dim{cfg.dim}" if cfg.dim else ""), batch_size=cfg.batch_size,
                              dim=cfg.dim)
        results = mteb.evaluate(encoder, tasks,
                                cache=mteb.ResultCache(cache_path=str(out / "mteb")),
                                overwrite_strategy="always" if cfg.overwrite else "only-missing",
                                encode_kwargs={"batch_size": cfg.batch_size}, show_progress_bar=True)
        rows = summarize(results, tasks)
        (out / "summary.json").write_text(json.dumps(rows, indent=2))
        (out / "summary.md").write_text(_markdown(rows))
        tracking.log_results(loggers, {f"mteb/{r['category']}": r["mean_main_score"] for r in rows},
                             tables={"mteb/summary": rows})
    print(_markdown(rows))
    return rows


main = entry("evaluate", run)


if __name__ == "__main__":
    main()
