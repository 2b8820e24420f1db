"""Two trainers, one step each in turn: how part (b) times lco against sentence-transformers under equal load.

On a shared machine whose speed drifts by 10-20% over seconds, two runs timed one after the other measure the
drift as much as the trainers. ``take_turns`` runs the two trainers as coroutines (greenlets) in one thread and
switches between them at every step start (lco: Lightning's ``on_train_batch_start``; ST: the HF ``Trainer``'s
``on_step_begin``), so step i of one sits between steps i and i+1 of the other. A step is timed from the moment
its trainer resumes to the moment it hands over: the trainer's whole loop for one step (fetch, tokenise,
forward, backward, optimizer, hooks), none of the other's. One thread, not two: each thread that runs torch ops
gets its own OpenMP team, whose workers spin for a while after each parallel region, so an idle trainer's team
would steal the cores of the running one (measured here: both steps ~1.8x slower). When one trainer has run all
its steps the other finishes alone.

Both trainers draw dropout masks from torch's global random stream, and ST's trainer reseeds it when it starts
(while lco waits at its first step), so interleaved they draw different masks than each would alone: the work
is the same, the weights reached differ (the like-for-like weight check runs the
trainers alone, ``tests/test_bench_peers.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from greenlet import greenlet
from transformers import TrainerCallback


class Turns:
    """Switches between the lco greenlet (``lco``) and the ST greenlet (``st``); ``times[name]``: seconds of each
    of that trainer's steps, in order."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, list[float]] = {"lco": [], "st": []}
        self.threads: dict[str, greenlet] = {}
        self.errors: list[Exception] = []  # ST's error, raised in lco's greenlet at its next step start
        self._resumed: dict[str, float | None] = {"lco": None, "st": None}

    def _stop_clock(self, name: str) -> None:
        if self._resumed[name] is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.times[name].append(time.perf_counter() - self._resumed[name])
            self._resumed[name] = None

    def step_begins(self, name: str) -> None:
        """Called by trainer ``name`` at each step start: close its previous step, let the other run one step
        (if it has not finished), then start timing this one."""
        self._stop_clock(name)
        other = self.threads["st" if name == "lco" else "lco"]
        if not other.dead:
            other.switch()
        if self.errors and name == "lco":
            raise self.errors[0]
        self._resumed[name] = time.perf_counter()

    def finished(self, name: str) -> None:
        """Trainer ``name`` has run its last step: close it."""
        self._stop_clock(name)


class LcoTurn(pl.Callback):
    """lco's side of ``Turns`` (a Lightning callback)."""

    def __init__(self, turns: Turns):
        self.turns = turns

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.turns.step_begins("lco")

    def on_train_end(self, trainer, pl_module) -> None:
        self.turns.finished("lco")


class StTurn(TrainerCallback):
    """sentence-transformers' side of ``Turns`` (an HF ``TrainerCallback``)."""

    def __init__(self, turns: Turns):
        self.turns = turns

    def on_step_begin(self, args, state, control, **kwargs):
        self.turns.step_begins("st")

    def on_train_end(self, args, state, control, **kwargs):
        self.turns.finished("st")


def take_turns(run_lco: Callable, run_st: Callable, device: torch.device) -> dict[str, list[float]]:
    """Run ``run_lco(callback)`` and ``run_st(callback)`` one step each in turn (lco sets up, then ST while lco
    waits at its first step, then lco's step 0, ST's step 0, ...); returns seconds per step of each
    (``{"lco": [...], "st": [...]}``). An error in either stops both and is raised here."""
    turns = Turns(device)

    def st_side():
        try:
            run_st(StTurn(turns))
        except Exception as error:  # stops lco at its next step start (a KeyboardInterrupt reaches lco as is)
            turns.errors.append(error)

    st = greenlet(st_side)
    turns.threads = {"lco": greenlet.getcurrent(), "st": st}
    try:
        run_lco(LcoTurn(turns))
    except BaseException:
        if not st.dead:
            st.throw()  # lco failed or was interrupted: end ST where it waits (GreenletExit), no run of its own
        raise
    while not st.dead:  # lco is done: ST runs its remaining steps alone
        st.switch()
    if turns.errors:
        raise turns.errors[0]
    return turns.times
