"""Losing no work: atomic checkpoint files and folders, RNG state in checkpoints, a checkpoint on SIGTERM, resume.

- ``AtomicCheckpointIO`` (a Lightning ``CheckpointIO`` plugin, set by ``lco.train``): each ``.ckpt`` is written to
  a temporary file in the same folder, flushed to disk (``fsync``), then renamed over the target. A run killed
  mid-write leaves the previous ``last.ckpt`` whole.
- ``atomic_folder(path)``: the same for a folder (the ``adapter/`` a run writes at its end). The new folder is
  written beside the old one, then swapped in.
- ``RNGState`` (callback): checkpoints carry the Python, NumPy, torch CPU and CUDA generator states. A resumed run
  restores them just before its first training batch, so dropout masks continue as in an uninterrupted run.
- ``Preemption`` (callback): on SIGTERM, Lightning stops after the current batch with ``SIGTERMException``. This
  callback then writes ``last.ckpt`` and ``lco.cli`` exits with status 143 and a resume hint.
- ``resume_checkpoint(cfg)``: which checkpoint ``lco.train`` resumes from. See its docstring for the rules.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lco.errors import ConfigError

LAST = "last.ckpt"
PARTIAL = ".tmp-"  # infix of a write in progress: <name>.tmp-XXXX (left behind only by a kill mid-write)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete ``*.tmp-*`` files a killed write left in ``folder`` (call only when no other process writes there:
    at resume). Returns what was removed."""
    stale = [p for p in Path(folder).glob(f"*{PARTIAL}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<name>.tmp-*`` beside the target, ``fsync``, ``os.replace`` onto the target.

    Remote paths (``s3://``...) go through Lightning's own writer, which uploads the whole buffer at once."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{path.name}{PARTIAL}", dir=path.parent)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the checkpoint from the group
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | Path):
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` (any old one is removed
    only after the new one is in place); on an exception it is deleted and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{PARTIAL}", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the folder from the group
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))  # unique, empty: rename onto it
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}  # tensors and ints: weights_only loads it
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only; ranks share a seed (see RNGState)
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RNGState(pl.Callback):
    """Saves every generator's state in checkpoints (``state_dict``) and restores it before the first training
    batch after a resume (not at load time: building data iterators and the probe may draw numbers first).

    Under DDP the checkpoint holds rank 0's states (its CUDA state: its own device's). Every rank restores them:
    ranks are seeded alike and draw alike, so rank 0's state is each rank's own. A checkpoint written before the
    first resumed batch (a validation-end save, a preemption) carries the loaded, not yet applied, states."""

    def __init__(self):
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        return self._pending if self._pending is not None else _rng_state()

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            _set_rng_state(self._pending)
            self._pending = None


class Preemption(pl.Callback):
    """On ``SIGTERMException`` (Lightning raises it after the batch during which SIGTERM arrived) every rank takes
    part in writing ``dirpath/last.ckpt`` (Lightning's teardown then flushes the loggers); ``saved`` then holds
    its path for the exit message."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            self.saved = self.dirpath / LAST
            trainer.save_checkpoint(self.saved)
            exception.args = (f"preempted (SIGTERM) after step {trainer.global_step}; saved {self.saved}. Resume "
                              f"with the same command plus ckpt_path={self.dirpath.parent} (or ckpt_path=last).",)


def _latest_run_with_checkpoint(runs: Path) -> Path | None:
    found = sorted((p for p in runs.glob(f"*/checkpoints/{LAST}")), key=lambda p: p.parent.parent.name)
    return found[-1] if found else None


def _verified(path: Path) -> Path:
    if path.is_dir():  # a sharded (DeepSpeed) checkpoint folder: its strategy loads and checks it
        if (path / "checkpoint").is_dir() or (path / "latest").is_file():
            return path
        raise ConfigError(f"cannot resume from {path}: a folder that is neither an lco run folder (with "
                          f"checkpoints/{LAST}) nor a DeepSpeed checkpoint (with checkpoint/ and latest).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError (code in the file), RuntimeError (not a zip)...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"cannot resume from {path}: it does not load as a checkpoint with weights_only=True ({first}). lco "
            "never unpickles arbitrary objects, since they can run code. Resume from a checkpoint lco wrote, or "
            "drop ckpt_path (and move the file away from checkpoints/ to stop auto_resume).") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"cannot resume from {path}: it holds no Lightning state_dict. Give a .ckpt that lco wrote.")
    return path


def resume_checkpoint(cfg) -> Path | None:
    """The checkpoint ``lco.train`` resumes from, or None for a fresh run.

    - ``ckpt_path=null`` with ``auto_resume=true``: ``<paths.output_dir>/checkpoints/last.ckpt`` if it exists. A
      rerun with a fixed run folder (``hydra.run.dir=...``, e.g. a scheduler requeue) continues there.
    - ``ckpt_path=last``: the newest run of this ``task_name`` (``<paths.log_dir>/<task_name>/runs/*``) that has a
      ``checkpoints/last.ckpt``. ``lco.train`` then writes on in that run's folder.
    - ``ckpt_path=<file or run folder>``: that ``.ckpt`` file, or ``<folder>/checkpoints/last.ckpt``.

    The file is opened with ``weights_only=True`` (memory-mapped, so only its index is read) before anything
    loads: ``ConfigError`` when ``ckpt_path`` names nothing that exists, or a file that is not a checkpoint or
    holds pickled objects other than tensors and plain containers (lco never runs code from a checkpoint).
    """
    value = cfg.get("ckpt_path")
    if value is None:
        last = Path(cfg.paths.output_dir) / "checkpoints" / LAST
        if not cfg.get("auto_resume", True) or not last.exists():
            return None
        if (last.parent.parent / "metrics.json").is_file():  # written only when fit completed
            raise ConfigError(
                f"the run folder {last.parent.parent} holds a finished run (metrics.json; {LAST}), and auto_resume "
                "would retrain nothing and overwrite its results. Pick a new hydra.run.dir, or continue it on "
                f"purpose with ckpt_path={last} and a larger trainer.max_steps / max_epochs.")
        return _verified(last)
    if str(value) == "last":
        runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
        found = _latest_run_with_checkpoint(runs)
        if found is None:
            raise ConfigError(f"ckpt_path=last: no run under {runs} has checkpoints/{LAST}. Give the checkpoint "
                              "itself (ckpt_path=/path/to/run/checkpoints/last.ckpt), or drop ckpt_path to start "
                              "a fresh run.")
        return _verified(found)
    path = Path(str(value))
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints" / LAST
    if not path.exists():
        raise ConfigError(f"ckpt_path={value}: {path} does not exist. Give a .ckpt file, a run folder with "
                          f"checkpoints/{LAST}, or ckpt_path=last (the newest run of task_name={cfg.task_name}).")
    return _verified(path)
