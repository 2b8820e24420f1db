"""Part (a) of ``make bench``: lco against the floor.

The same model, LoRA, InfoNCE, AdamW with its schedule, and the same pre-collated batches, trained through lco
(``ContrastiveModule`` under a Lightning ``Trainer`` with ``conf/callbacks/default.yaml``'s Rich progress bar, as
``lco.train`` builds it) and through a hand-written PyTorch loop around the same ``Step`` (plan, forward, loss),
then backward and the optimizer (``PlainLoop``, on its own copy of the model). The two alternate step by step
in one process (``Paired``: plain step i, then lco step i), so a change in machine load or clock hits both
alike; on a shared machine that drifts by 10-20% over seconds, runs timed one after the other could not resolve
a 5% difference. Reported per round: the median step after ``warmup`` steps of each path, their ratio lco /
plain (issue 7's goal: <= 1.05) and the median of the per-step ratios; the headline is the median over rounds.
Run alone, both paths reach the same weights (``tests/test_bench.py``), so the comparison is like for like.
"""

from __future__ import annotations

import math
import statistics
import time
from functools import partial

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities import move_data_to_device
from torch.utils.data import DataLoader

from lco.data.collate import TripletCollator
from lco.models.embedder import configured
from lco.module import ContrastiveModule
from lco.optim import build_scheduler
from lco.step.gradcache import RngState


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(cfg: DictConfig):
    """A fresh (embedder, method, loss, step), identical for every call with the same ``cfg.seed``; the caller
    applies the method (``ContrastiveModule`` does it itself), so both paths draw the same LoRA init."""
    pl.seed_everything(cfg.seed, verbose=False)
    return configured(cfg), instantiate(cfg.method), instantiate(cfg.loss), instantiate(cfg.step)


def make_batches(cfg: DictConfig, embedder, times: list[float] | None = None) -> list[dict]:
    """``cfg.steps`` collated batches; appends each collation's wall seconds to ``times`` if given."""
    records = instantiate(cfg.source, n=cfg.batch_size * cfg.steps).load()
    collate = TripletCollator(embedder.preprocessor)
    batches = []
    for i in range(0, len(records), cfg.batch_size):
        start = time.perf_counter()
        batches.append(collate(records[i: i + cfg.batch_size]))
        if times is not None:
            times.append(time.perf_counter() - start)
    return batches


def counted(times: list[float], warmup: int) -> list[float]:
    """The step times a median is taken over: after ``warmup``, and without the last when more remain (it ends at
    the last batch's end hook, without the next fetch every other step includes)."""
    return times[warmup:-1] if len(times) > warmup + 1 else times[warmup:]


class PlainLoop:
    """The floor: a hand-written training step (the ``Step``'s plan, forward passes and loss; backward, AdamW,
    schedule) on its own model. It draws dropout from its own saved RNG state, so running its steps between lco's
    changes neither path's random stream."""

    def __init__(self, embedder, method, loss_fn, step, total_steps: int, cfg: DictConfig, device: torch.device):
        method.apply(embedder)
        self.embedder, self.loss_fn, self.device = embedder.to(device).train(), loss_fn.to(device), device
        self.shared_step = step  # the Step ContrastiveModule calls: plan, forward passes, loss
        step.setup(device.type, embedder.family)
        params = [p for p in embedder.parameters() if p.requires_grad] + [p for p in loss_fn.parameters()
                                                                              if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr)
        self.scheduler = build_scheduler(self.optimizer, total_steps, "linear", cfg.warmup_steps)
        self.rng = RngState(device)  # CPU and (on CUDA) this device's random state

    def step(self, batch: dict) -> float:
        """One training step on a collated (CPU) batch; returns its wall seconds."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self.rng.restore()
            _sync(self.device)
            start = time.perf_counter()
            self._step(batch)
            _sync(self.device)
            seconds = time.perf_counter() - start
            self.rng = RngState(self.device)
        return seconds

    def _step(self, batch: dict) -> None:
        planned = self.shared_step.plan(batch, self.embedder.pad_token_id, self.embedder.placeholder_ids,
                                        self.embedder.position_rows)
        loss = self.shared_step.loss(self.embedder, self.loss_fn, move_data_to_device(planned, self.device))
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def plain_loop(embedder, method, loss_fn, step, batches: list[dict], cfg: DictConfig,
               device: torch.device) -> list[float]:
    """``PlainLoop`` over ``batches`` on its own; returns seconds per step."""
    loop = PlainLoop(embedder, method, loss_fn, step, len(batches), cfg, device)
    return [loop.step(batch) for batch in batches]


class StepTimer(pl.Callback):
    """Wall seconds between consecutive ``on_train_batch_start`` calls, and after the last step."""

    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _sync(pl_module.device)
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            _sync(pl_module.device)
            self.starts.append(time.perf_counter())

    @property
    def times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


class Paired(StepTimer):
    """``StepTimer`` that runs one ``PlainLoop`` step on the same batch before each lco step, so the two paths
    alternate step by step and meet the same machine state (load, clock). The lco step is timed from the end of
    the plain step to the next lco batch start: Lightning's whole loop (fetch, transfer, step, backward,
    optimizer, hooks, progress bar) and nothing of the plain step."""

    def __init__(self, plain: PlainLoop, batches: list[dict]):
        super().__init__()
        self.plain, self.batches, self.plain_times, self.lco_times = plain, batches, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.starts:
            _sync(pl_module.device)
            self.lco_times.append(time.perf_counter() - self.starts[-1])
        self.plain_times.append(self.plain.step(self.batches[batch_idx]))
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            _sync(pl_module.device)
            self.lco_times.append(time.perf_counter() - self.starts[-1])

    @property
    def times(self) -> list[float]:
        """lco's step times (``StepTimer.times`` would span the plain steps between them)."""
        return self.lco_times


def lco_loop(embedder, method, loss_fn, step, batches: list[dict], cfg: DictConfig, accelerator: str,
             timer: StepTimer | None = None, extra: list[pl.Callback] = ()) -> list[float]:
    """Train ``batches`` through ``ContrastiveModule`` under a Lightning ``Trainer`` (with ``extra`` callbacks);
    returns ``timer.times`` (a fresh ``StepTimer`` unless given)."""
    module = ContrastiveModule(embedder, method=method, loss=loss_fn, step=step,
                               optimizer=partial(torch.optim.AdamW, lr=cfg.lr),
                               scheduler=partial(build_scheduler, name="linear", warmup_steps=cfg.warmup_steps),
                               gradient_checkpointing=False, max_nonfinite_skips=0)
    timer = timer or StepTimer()
    trainer = pl.Trainer(accelerator=accelerator, devices=1, max_steps=len(batches), logger=False,
                         enable_checkpointing=False, callbacks=[timer, *extra, instantiate(cfg.callbacks.progress_bar)],
                         limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False)
    trainer.fit(module, DataLoader(batches, batch_size=None, shuffle=False))
    return timer.times


def part_a(cfg: DictConfig, device: torch.device) -> tuple[dict, list[str]]:
    """Rounds of paired runs (a plain step before each lco step); returns (results dict, markdown lines)."""
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    rounds, collate_s = [], []
    for _ in range(cfg.rounds):
        embedder, method, loss_fn, step = build(cfg)
        batches = make_batches(cfg, embedder, collate_s)
        paired = Paired(PlainLoop(embedder, method, loss_fn, step, len(batches), cfg, device), batches)
        embedder, method, loss_fn, step = build(cfg)
        lco = counted(lco_loop(embedder, method, loss_fn, step, batches, cfg, accelerator, paired), cfg.warmup)
        plain = counted(paired.plain_times, cfg.warmup)
        rounds.append({"plain_s": statistics.median(plain), "lco_s": statistics.median(lco),
                       "pair_ratio": statistics.median(b / a for a, b in zip(plain, lco))})
        rounds[-1]["ratio"] = rounds[-1]["lco_s"] / rounds[-1]["plain_s"]
    result = {"what": "lco training step vs a hand-written PyTorch loop (median seconds per step)",
              "batch_size": cfg.batch_size, "steps": cfg.steps, "warmup": cfg.warmup, "rounds": rounds,
              "ratio_median": statistics.median(r["ratio"] for r in rounds), "goal": "<= 1.05",
              "collate_s": statistics.median(collate_s)}
    # DataLoader workers keep up when each makes a batch in at most (workers x step time)
    result["workers_needed"] = math.ceil(result["collate_s"] / min(r["lco_s"] for r in rounds))
    lines = ["## (a) lco's training step vs a hand-written PyTorch loop", "",
             f"Method `{cfg.method._target_.rsplit('.', 1)[-1]}` (r={cfg.method.get('r', '-')}), batch "
             f"{cfg.batch_size} text triplets, {cfg.steps} steps per path and round (first {cfg.warmup} and the "
             "last not counted). The paths alternate step by step (plain step i, then lco step i) in one process.", "",
             "| round | plain loop s/step | lco s/step | lco / plain | median per-step ratio |", "|---|---|---|---|---|"]
    lines += [f"| {i} | {r['plain_s']:.4f} | {r['lco_s']:.4f} | {r['ratio']:.3f} | {r['pair_ratio']:.3f} |"
              for i, r in enumerate(rounds)]
    lines += ["", f"Median ratio: **{result['ratio_median']:.3f}** (goal {result['goal']}).", "",
              f"Collation (tokenise + chat template, in one process): {result['collate_s']:.4f} s per batch, so "
              f"{result['workers_needed']} DataLoader worker(s) keep up with lco's fastest round "
              "(`data.num_workers`, 4 in the real-data configs).", ""]
    return result, lines
