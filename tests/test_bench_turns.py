"""make bench, part (b)'s turn-taking: the two trainers alternate one step at a time, never overlap, and each
step's time is its own (``lco/bench/turns.py``; the real trainers run through it in test_bench_peers.py)."""

import time

import pytest
import torch

from lco.bench.turns import take_turns

CPU = torch.device("cpu")


def _trainer(name, steps, log, work, fail_at=None):
    """A loop with the hook calls of Lightning (lco) or the HF Trainer (ST): step start, work, train end."""
    def run(callback):
        if name == "st":
            log.append(("st", "setup"))
        for i in range(steps):
            if name == "lco":
                callback.on_train_batch_start(None, None, None, i)
            else:
                callback.on_step_begin(None, None, None)
            if fail_at is KeyboardInterrupt:
                raise KeyboardInterrupt
            if i == fail_at:
                raise RuntimeError(f"{name} failed at step {i}")
            log.append((name, i))
            time.sleep(work)
        if name == "lco":
            callback.on_train_end(None, None)
        else:
            callback.on_train_end(None, None, None)
    return run


def test_trainers_alternate_step_by_step_and_time_only_their_own_steps():
    log = []
    times = take_turns(_trainer("lco", 3, log, 0.01), _trainer("st", 5, log, 0.1), CPU)
    assert log == [("st", "setup"), ("lco", 0), ("st", 0), ("lco", 1), ("st", 1), ("lco", 2), ("st", 2),
                   ("st", 3), ("st", 4)]  # ST sets up while lco waits; ST runs its last steps alone
    assert len(times["lco"]) == 3 and len(times["st"]) == 5
    # a step's time holds its own work and never the other's (lco's would then be >= 0.1 s)
    assert all(0.01 <= t < 0.09 for t in times["lco"]) and all(0.1 <= t < 0.19 for t in times["st"])


def test_an_error_in_either_trainer_stops_both_and_is_raised():
    log = []
    with pytest.raises(RuntimeError, match="st failed at step 1"):
        take_turns(_trainer("lco", 4, log, 0.0), _trainer("st", 4, log, 0.0, fail_at=1), CPU)
    assert log == [("st", "setup"), ("lco", 0), ("st", 0), ("lco", 1)]  # lco stops at its next step start
    log = []
    with pytest.raises(RuntimeError, match="lco failed at step 1"):
        take_turns(_trainer("lco", 3, log, 0.0, fail_at=1), _trainer("st", 3, log, 0.0), CPU)
    assert log == [("st", "setup"), ("lco", 0), ("st", 0)]  # ST is ended where it waits, not run on alone
    log = []
    with pytest.raises(KeyboardInterrupt):
        take_turns(_trainer("lco", 3, log, 0.0), _trainer("st", 3, log, 0.0, fail_at=KeyboardInterrupt), CPU)
    assert log == [("st", "setup"), ("lco", 0)]
