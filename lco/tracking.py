"""Experiment tracking: one W&B run per job, named, grouped and configured so a dashboard can compare a sweep.

``WandbLogger`` (``logger=wandb``) is Lightning's ``WandbLogger`` with lco's run identity filled in where the
config leaves it null:

- ``name``: the overrides a multirun sweeps, with this job's values (``method=lora``); a single run: task_name.
- ``group``: ``<task_name>/<sweep folder>`` for a multirun job, so each sweep is one group; else task_name.
- ``job_type``: the entry point (``train``, ``evaluate``, ``analyze``, ``soup``).

``lco.train`` then calls ``start`` (the resolved config, secrets masked, plus ``provenance``, as the run's config;
``tracking.json`` in the run folder with the run's id, project, group and name), ``summarize`` (before/after
metrics, cost, parameter counts and the probe's before/after table in the run's summary; the adapter folder as an
artifact with ``log_adapter=true``) and, in every case, ``finish``: a W&B run still open when a job ends would be
reused by the next job of the sweep (Lightning: "There is a wandb run already in progress ...").
``lco.evaluate`` / ``lco.analyze`` ``follow`` the training run of the checkpoint they read: same group and name,
their own job_type. On resume in the same run folder the W&B run goes on under its id. Only rank 0 logs.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from lco import card as cards

TRACKING = "tracking.json"


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def swept_overrides(hydra_cfg) -> list[str]:
    """This multirun job's values of the keys its sweep varies (``["method=lora"]``); ``[]`` outside a multirun.

    The sweep's own command line is read from ``<sweep dir>/multirun.yaml``, which Hydra writes before it launches
    any job (locally or through a cluster launcher), so every job, in any process, sees the same sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return []
    sweep_file = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if not sweep_file.is_file():
        return list(hydra_cfg.overrides.task)
    sweep = OmegaConf.load(sweep_file).hydra
    parser = OverridesParser.create()
    try:
        swept = {o.get_key_element() for o in parser.parse_overrides(list(sweep.overrides.task))
                 if o.is_sweep_override()}
    except Exception:  # noqa: BLE001 - a line lco.security masked may no longer parse: name by all overrides
        return list(hydra_cfg.overrides.task)
    swept |= set((sweep.get("sweeper") or {}).get("params") or {})  # sweeps declared in config (hydra.sweeper.params)
    mine = list(hydra_cfg.overrides.task)
    return [line for line, o in zip(mine, parser.parse_overrides(mine)) if o.get_key_element() in swept]


def identity(task: str) -> dict[str, str]:
    """``{"name", "group", "job_type"}`` of this job (see the module docstring)."""
    from hydra.types import RunMode

    hydra_cfg = _hydra()
    job_type = str(hydra_cfg.job.config_name) if hydra_cfg is not None and hydra_cfg.job.config_name else "train"
    if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN:
        name = ",".join(swept_overrides(hydra_cfg)) or f"{task}-{hydra_cfg.job.num}"
        return {"name": name, "group": f"{task}/{Path(hydra_cfg.sweep.dir).name}", "job_type": job_type}
    return {"name": task, "group": task, "job_type": job_type}


def choices() -> dict[str, str]:
    """The option picked in each config group (``{"method": "lora", "data": "scenes", ...}``; Hydra's own groups
    left out), so a dashboard can group runs by ``choices.method`` as well as filter by any value."""
    hydra_cfg = _hydra()
    if hydra_cfg is None:
        return {}
    return {k: v for k, v in hydra_cfg.runtime.choices.items()
            if k != "hydra" and not k.startswith("hydra/") and v is not None}


def run_config(cfg: DictConfig, provenance: dict) -> dict:
    """What a run records as its config: the resolved config with secrets masked (as ``config.yaml``), the
    groups' ``choices`` and ``provenance``."""
    from lco.security import redact

    return {**redact(OmegaConf.to_container(cfg, resolve=True)), "choices": choices(), "provenance": provenance}


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger; null ``name``/``group``/``job_type`` come from ``identity(task)``.

    ``log_adapter``: log the run's ``adapter/`` folder as a W&B artifact (type ``model``) when training ends.
    ``init``: further ``wandb.init`` arguments (``settings``, ``resume``...). ``id``: continue that W&B run."""

    def __init__(self, project: str = "lco", task: str = "train", name: str | None = None,
                 group: str | None = None, job_type: str | None = None, tags: list[str] | tuple = (),
                 notes: str | None = None, entity: str | None = None, mode: str = "online", save_dir: str = ".",
                 id: str | None = None, log_model: bool | str = False, log_adapter: bool = False,
                 init: dict | None = None):
        me = identity(task)
        from lco.security import redact_text

        super().__init__(project=project, name=name or me["name"], group=group or me["group"],
                         job_type=job_type or me["job_type"], tags=[redact_text(str(t)) for t in tags],
                         notes=notes, entity=entity,
                         mode=mode, save_dir=save_dir, id=id, log_model=log_model, **dict(init or {}))
        self.log_adapter = log_adapter


def wandb_loggers(loggers) -> list[LightningWandbLogger]:
    return [lg for lg in loggers if isinstance(lg, LightningWandbLogger)]


def resume_id(node: DictConfig | None, run_folder: Path) -> dict:
    """Extra ``instantiate`` kwargs for a W&B logger node: on resume in ``run_folder``, its W&B run's id."""
    if node is None or not str(node.get("_target_", "")).endswith("WandbLogger") or node.get("id"):
        return {}
    recorded = read_tracking(run_folder)
    return {"id": recorded["id"]} if recorded.get("id") else {}


def read_tracking(run_folder: str | Path) -> dict:
    path = Path(run_folder) / TRACKING
    return json.loads(path.read_text()) if path.is_file() else {}


def follow(node: DictConfig | None, checkpoint: str | Path | None) -> dict:
    """Extra ``instantiate`` kwargs so an evaluation logs beside the training run that wrote ``checkpoint``
    (``<run>/adapter``): that run's group and name, unless the logger config sets its own."""
    if node is None or checkpoint is None or not str(node.get("_target_", "")).endswith("WandbLogger"):
        return {}
    recorded = read_tracking(Path(checkpoint).resolve().parent)
    return {k: recorded[k] for k in ("group", "name") if recorded.get(k) and node.get(k) is None}


@rank_zero_only
def start(loggers, config: dict, run_folder: Path) -> None:
    """Give every logger the run's config (Lightning's ``log_hyperparams``); W&B runs start here and their
    identity is written to ``run_folder/tracking.json``."""
    for logger in loggers:
        logger.log_hyperparams(config)
    for logger in wandb_loggers(loggers):
        run = logger.experiment
        run_folder.mkdir(parents=True, exist_ok=True)
        (run_folder / TRACKING).write_text(json.dumps({
            "id": run.id, "project": run.project, "entity": getattr(run, "entity", None), "group": run.group,
            "name": run.name, "job_type": run.job_type, "mode": run.settings.mode, "dir": run.dir,
            "url": getattr(run, "url", None)}, indent=2))


@rank_zero_only
def summarize(loggers, before: dict, after: dict, cost: dict, params: dict, probe: Path | None = None,
              adapter: Path | None = None) -> None:
    """Put a finished run's results in each W&B run's summary: ``before/<metric>`` and ``after/<metric>``,
    ``cost/*``, ``params/*``, the probe's before/after as a ``probe/before_after`` table; the adapter artifact."""
    import wandb

    for logger in wandb_loggers(loggers):
        run = logger.experiment
        summary = {f"before/{k}": v for k, v in before.items()}
        summary.update({f"after/{k}": v for k, v in after.items()})
        summary.update({f"cost/{k}": v for k, v in cost.items()})
        summary.update({f"params/{k}": v for k, v in params.items()})
        run.summary.update(summary)
        if probe is not None and probe.is_file():
            result = json.loads(probe.read_text())
            rows = [[k, result["before"][k], v, v - result["before"][k]] for k, v in result["after"].items()]
            run.log({"probe/before_after": wandb.Table(columns=["metric", "before", "after", "change"], data=rows)})
        if getattr(logger, "log_adapter", False) and adapter is not None and adapter.is_dir():
            artifact = wandb.Artifact(f"adapter-{run.id}", type="model", metadata=cards.read(adapter))
            artifact.add_dir(str(adapter))
            run.log_artifact(artifact)


@contextmanager
def finishing(loggers: list):
    """Yields ``loggers``; on leaving, ``finish`` them (``failed`` when an exception leaves the block)."""
    failed = True
    try:
        yield loggers
        failed = False
    finally:
        finish(loggers, failed)


@contextmanager
def tracked(cfg: DictConfig, follow_checkpoint: str | Path | None = None):
    """The ``logger`` of an entry point without a Trainer (``evaluate``, ``analyze``, ``soup``), started with its
    config and finished on leaving; ``[]`` with ``logger=none``. A W&B run follows the training run of
    ``follow_checkpoint``."""
    from hydra.utils import instantiate

    from lco.provenance import environment

    node = cfg.get("logger")
    loggers = [instantiate(node, **follow(node, follow_checkpoint))] if node else []
    with finishing(loggers):
        start(loggers, run_config(cfg, environment()), Path(cfg.paths.output_dir))
        yield loggers


@rank_zero_only
def log_results(loggers, summary: dict, tables: dict[str, list[dict]] | None = None,
                images: dict[str, Path] | None = None) -> None:
    """An entry point's results: ``summary`` (flat ``{key: number}``) to every logger as metrics and to each W&B
    run's summary; ``tables`` (rows of dicts) and ``images`` (PNG files) to W&B as ``wandb.Table``/``Image``."""
    for logger in loggers:
        logger.log_metrics(summary)
        logger.save()
    if not wandb_loggers(loggers):
        return
    import wandb

    for logger in wandb_loggers(loggers):
        logger.experiment.log({**{k: wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
                                  for k, rows in (tables or {}).items() if rows},
                               **{k: wandb.Image(str(path)) for k, path in (images or {}).items()}})
        logger.experiment.summary.update(summary)


def finish(loggers, failed: bool) -> None:
    """End each W&B run this process opened (exit code 1 when the job failed), so the next job gets its own."""
    for logger in wandb_loggers(loggers):
        if logger._experiment is not None:  # noqa: SLF001 - opened by this process (rank 0 only)
            logger._experiment.finish(exit_code=1 if failed else 0)  # noqa: SLF001
            logger._experiment = None  # noqa: SLF001
