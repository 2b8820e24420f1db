"""``python -m lco.train [overrides]``: compose conf/train.yaml, check it, then data -> model -> fit -> save.

The path: ``check_config`` -> step, method, loss (``conf/step``, ``method``, ``loss``) -> ``data.load()`` ->
preprocessing (``conf/preprocess``) -> backbone (``model``) -> embedder (``embed``) -> ``module`` (the
LightningModule, with the optimizer and scheduler of ``optim``) -> callbacks, logger, trainer -> fit.
``run(cfg)`` returns the final metrics and the objects it built, as lightning-hydra-template does.

Order matters: config keys, the checkpoint to resume from and data records are validated before any model
weights load, so mistakes fail in seconds. A run resumes (``lco/checkpointing.py``) from ``ckpt_path`` (a file,
a run folder, or ``last``: the newest run of this task) or, by default, from its own folder's
``checkpoints/last.ckpt``; checkpoints are written atomically, carry RNG states, and SIGTERM writes one.

Outputs go to the run folder (``paths.output_dir``): ``config.yaml`` (secrets masked, ``lco/security.py``),
``checkpoints/``, ``adapter/`` (peft folder + processor + ``lco_embedding.json``), logger files, and
``probe.json`` when the data config has a probe (before/after evaluation, e.g. ``data=toyworld``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from lco import tracking
from lco.callbacks import Probe, SaveEmbedder
from lco.checkpointing import AtomicCheckpointIO, Preemption, RNGState, remove_partial_writes, resume_checkpoint
from lco.cli import entry
from lco.config import check_config, check_launch, check_modalities
from lco.models.backbone import check_local
from lco.provenance import environment
from lco.security import redact
from lco.summary import print_summary, record_cost, write_metrics


def _instantiate_group(group: DictConfig | None) -> list:
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def _strategy(cfg: DictConfig, method, step) -> dict:
    """Trainer kwargs that adapt the configured strategy to the method and step (else ``{}``)."""
    strategy = cfg.trainer.get("strategy")
    # a node with _target_ (conf/trainer/*.yaml) or a Lightning strategy name ("ddp", "fsdp", "deepspeed_stage_2")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy or "")
    named = not isinstance(strategy, DictConfig)
    if named and ("fsdp" in target.lower() or "deepspeed" in target.lower()):
        target = "FSDP" if "fsdp" in target.lower() else "DeepSpeed"
    kwargs = {}
    step.check_strategy(target)
    # sharded strategies write checkpoint folders with their own IO; every other gets atomic .ckpt files, added
    # to the user's trainer.plugins (a SLURM environment, say), not in place of them
    plugins = cfg.trainer.get("plugins") or []
    plugins = [instantiate(p) for p in plugins] if isinstance(plugins, (list, ListConfig)) else [instantiate(plugins)]
    extra = {} if ("FSDP" in target or "DeepSpeed" in target) else {"plugins": [*plugins, AtomicCheckpointIO()]}
    if method.trains_tower and ("DDP" in target or (named and target.startswith("ddp"))):
        # a tower gets no gradient from text-only batches: DDP must look for unused parameters
        if named:
            return {**extra, "strategy": "ddp_find_unused_parameters_true"}
        kwargs["find_unused_parameters"] = True
    return {**extra, "strategy": instantiate(strategy, **kwargs)} if kwargs else extra


def _logger(node: DictConfig, resume, out: Path):
    """The configured logger; on resume a CSV logger writes a new version (``csv/resumed_<time>``): its fixed
    version would make Lightning clear the interrupted run's ``metrics.csv``; a W&B logger goes on in the run
    folder's W&B run."""
    if resume is not None and str(node.get("_target_", "")).endswith("CSVLogger"):
        return instantiate(node, version=f"resumed_{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    return instantiate(node, **(tracking.resume_id(node, out) if resume is not None else {}))


def run(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Train with a composed config. Returns ``(metrics, built)``: the final logged metrics (floats) and the
    objects built from the config (``datamodule``, ``preprocessor``, ``embedder``, ``module``, ``trainer``,
    ``callbacks``, ``loggers``)."""
    check_config(cfg)
    check_launch(cfg.trainer)
    check_local(cfg.model.path)  # a local model.path that is missing or has no weights fails before data loads
    step, method, loss = instantiate(cfg.step), instantiate(cfg.method), instantiate(cfg.loss)
    extra = _strategy(cfg, method, step)  # a step/strategy mismatch fails here, before data or weights load
    resume = resume_checkpoint(cfg)  # a ckpt_path naming nothing fails here too
    if resume is not None and resume.parent.name == "checkpoints" and (resume.parent.parent / "config.yaml").is_file():
        with open_dict(cfg):  # a checkpoint inside an lco run folder: write on in that folder
            cfg.paths.output_dir = str(resume.parent.parent)
        for stale in remove_partial_writes(resume.parent):
            print(f"lco: removed {stale.name}, a checkpoint write the interruption cut short")
    if resume is not None:
        print(f"lco: resuming from {resume}; this run writes in {cfg.paths.output_dir}")
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.load()  # bad data fails here, before the model loads
    check_modalities(datamodule.modalities(), cfg.model.family, cfg.model.path)
    if datamodule.probe is not None:
        check_modalities(set(getattr(datamodule.probe, "modalities", ())), cfg.model.family, cfg.model.path,
                         what="data.probe (set data.probe=null to train without it)")
    # partials, completed once the backbone is loaded; the prompter checks its suffixes here, before the weights load
    preprocess, make_embedder = instantiate(cfg.preprocess), instantiate(cfg.embed)
    make_module = instantiate(cfg.module)
    backbone = instantiate(cfg.model)
    preprocessor = preprocess(backbone.processor)  # one preprocessing, for the data and the embedder
    datamodule.attach(preprocessor)
    embedder = make_embedder(backbone, preprocessor)
    module = make_module(embedder, method=method, loss=loss, step=step, optimizer=instantiate(cfg.optim.optimizer),
                         scheduler=instantiate(cfg.optim.scheduler))
    out = Path(cfg.paths.output_dir)
    loggers = [_logger(cfg.logger, resume, out)] if cfg.get("logger") else []
    built = {"datamodule": datamodule, "preprocessor": preprocessor, "embedder": embedder, "module": module,
             "loggers": loggers}
    with tracking.finishing(loggers):  # each job of a sweep ends its own W&B run, also when it fails
        return _fit(cfg, built, extra, resume, out), built


def _fit(cfg: DictConfig, built: dict, extra: dict, resume, out: Path) -> dict[str, float]:
    """Callbacks, trainer, config and provenance on record, validation before, fit, summary; adds ``callbacks``
    and ``trainer`` to ``built``."""
    module, datamodule, loggers = built["module"], built["datamodule"], built["loggers"]
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if datamodule.probe is not None:  # the data's own before/after evaluation (e.g. toy-world held-out scenes)
        callbacks.append(Probe(datamodule.probe, out / "probe.json"))
    checkpoints = next((c.dirpath for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), None)
    callbacks += [RNGState(), Preemption(checkpoints or str(out / "checkpoints"))]
    if not loggers:  # logger=none: an LR monitor has nowhere to write (Lightning would refuse to start)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    built.update(callbacks=callbacks, trainer=trainer)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(redact(OmegaConf.to_container(cfg, resolve=True))), out / "config.yaml")
        provenance = {**environment(), "base_model": module.embedder.backbone.source}
        (out / "provenance.json").write_text(json.dumps(provenance, indent=2))
        tracking.start(loggers, tracking.run_config(cfg, provenance), out)
    before = {}
    if cfg.validate_before and resume is None and not trainer.fast_dev_run and datamodule.val_records:
        before = {k: float(v) for k, v in trainer.validate(module, datamodule, verbose=False)[0].items()}
    start = time.perf_counter()
    trainer.fit(module, datamodule, ckpt_path=resume, weights_only=True)
    after = {k: float(v) for k, v in trainer.callback_metrics.items()}
    cost = record_cost(trainer, time.perf_counter() - start)
    if (datamodule.val_records and trainer.limit_val_batches and not trainer.fast_dev_run
            and module.validated_at != trainer.global_step):
        # the run stopped between validations (max_steps, a time limit): "after" is measured on the final weights
        for results in trainer.validate(module, datamodule, verbose=False):
            after.update({k: float(v) for k, v in results.items()})
    if trainer.is_global_zero:
        write_metrics(out / "metrics.json", before, after, cost, module.parameter_counts(), module.method.name)
        print_summary(module, before, after, out, trainer)
        adapter = next((Path(c.dirpath) for c in callbacks if isinstance(c, SaveEmbedder)), None)
        tracking.summarize(loggers, before, after, cost, module.parameter_counts(),
                           probe=out / "probe.json" if datamodule.probe is not None else None, adapter=adapter)
    return after


def _objective(cfg: DictConfig) -> float | None:
    """``run`` for Hydra: returns ``val/r1`` so sweepers can optimise it."""
    return run(cfg)[0].get("val/r1")


main = entry("train", _objective)


if __name__ == "__main__":
    main()
