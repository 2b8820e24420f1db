"""``python -m lco.evaluate benchmark=mieb_lite checkpoint=<run>/adapter``: mteb benchmarks on an lco embedder.

Order: select the tasks, check their datasets are available (offline: fail at once, naming them), load the
embedder (a trained adapter folder, or the base ``model=``), run ``mteb.evaluate``. Writes mteb's result files
under ``<run folder>/mteb/results/<name>/<revision>/`` and ``summary.md`` / ``summary.json`` (mean main score
per task category and over all tasks).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from lco.config import ConfigError, check_config
from lco.evaluation.benchmarks import DatasetsUnavailable, check_available, skip_self_matches, summarize
from lco.models.backbone import BackboneUnavailable
from lco.train import CONF_DIR


def _markdown(rows: list[dict]) -> str:
    lines = ["| category | tasks | mean main score |", "|---|---|---|"]
    lines += [f"| {r['category']} | {r['tasks']} | {r['mean_main_score']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> list[dict]:
    import mteb

    from lco.evaluation.mteb_encoder import MtebEncoder
    from lco.models.loading import load_embedder

    check_config(cfg)
    tasks = instantiate(cfg.benchmark, task=cfg.task)
    check_available(tasks)
    skip_self_matches(tasks)
    if cfg.checkpoint:
        embedder, name = load_embedder(cfg.checkpoint), f"lco/{Path(cfg.checkpoint).resolve().parent.name}"
    else:
        embedder, name = instantiate(cfg.embed)(instantiate(cfg.model)), f"lco-base/{cfg.model.path}"
    out = Path(cfg.paths.output_dir)
    results = mteb.evaluate(MtebEncoder(embedder, name=name, batch_size=cfg.batch_size), tasks,
                            cache=mteb.ResultCache(cache_path=str(out / "mteb")),
                            overwrite_strategy="always" if cfg.overwrite else "only-missing",
                            encode_kwargs={"batch_size": cfg.batch_size}, show_progress_bar=True)
    rows = summarize(results, tasks)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    (out / "summary.md").write_text(_markdown(rows))
    print(_markdown(rows))
    return rows


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (DatasetsUnavailable, BackboneUnavailable, ConfigError, FileNotFoundError) as err:
        print(f"lco: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
