"""Losing no work: a run killed (SIGKILL) or preempted (SIGTERM) mid-epoch and resumed ends with the weights of an
uninterrupted run, bitwise, on CPU; checkpoint writes are atomic; ``ckpt_path`` resolves as documented."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lco.checkpointing import LAST, AtomicCheckpointIO, atomic_folder, resume_checkpoint
from lco.errors import ConfigError
from tests.conftest import compose_train

# 160 training records / 8 = 20 steps per epoch; 30 steps cross an epoch boundary. LoRA dropout 0.05 (the
# default) makes the result depend on the RNG state, which the checkpoint must carry.
RUN = ["model=tiny_text", "data=scenes", "data.sources.scenes.n=200", "data.val_size=40", "data.batch_size=8",
       "trainer.max_steps=30", "trainer.max_epochs=-1", "callbacks.model_checkpoint.every_n_train_steps=1",
       "validate_before=false", "logger=csv", "trainer.log_every_n_steps=1"]


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lco.train", *RUN, f"hydra.run.dir={run_dir}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _interrupt_at(run_dir: Path, sig: int, step: int = 7) -> subprocess.CompletedProcess:
    """Start a run and send ``sig`` once its step-``step`` checkpoint exists (mid-epoch: 20 steps per epoch)."""
    proc = _start(run_dir)
    target = run_dir / "checkpoints" / f"step{step:06d}.ckpt"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before step {step}:\n{proc.stderr.read()[-3000:]}"
    proc.send_signal(sig)
    return _finish(proc)


def _weights(run_dir: Path) -> tuple[int, dict]:
    ckpt = torch.load(run_dir / "checkpoints" / LAST, weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    done = _finish(_start(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    return _weights(run_dir)


def _assert_same_weights(run_dir: Path, reference) -> None:
    step, weights = _weights(run_dir)
    ref_step, ref = reference
    assert step == ref_step == 30 and set(weights) == set(ref)
    different = [k for k in ref if not torch.equal(weights[k], ref[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_sigkill_mid_epoch_then_auto_resume_equals_uninterrupted(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    killed = _interrupt_at(run_dir, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    step, _ = _weights(run_dir)
    assert 6 <= step < 30  # killed mid-run (step 7 may be half-done: last.ckpt follows the step file); it loads
    resumed = _finish(_start(run_dir))  # the same command: the run folder has last.ckpt, so it resumes
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"lco: resuming from {run_dir / 'checkpoints' / LAST}" in resumed.stdout
    _assert_same_weights(run_dir, uninterrupted)
    again = _finish(_start(run_dir))  # the run is finished now: auto-resume refuses to redo it
    assert again.returncode == 2 and "holds a finished run" in again.stderr, again.stderr[-2000:]


def test_sigterm_saves_a_checkpoint_and_resume_equals_uninterrupted(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    stopped = _interrupt_at(run_dir, signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    step, _ = _weights(run_dir)
    assert f"preempted (SIGTERM) after step {step}" in stopped.stderr and f"ckpt_path={run_dir}" in stopped.stderr
    assert not (run_dir / "adapter").exists()  # an unfinished run writes no final adapter
    resumed = _finish(_start(tmp_path / "elsewhere", f"ckpt_path={run_dir}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_weights(run_dir, uninterrupted)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    before = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    after = next((run_dir / "csv").glob("resumed_*/metrics.csv")).read_text().splitlines()
    assert len(before) > 1 and len(after) > 1  # the stopped run's curves are kept, the resumed run's beside them


def test_interrupted_checkpoint_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / LAST
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any file the user writes, not 0600

    def half_then_crash(obj, f):
        f.write(b"\x80\x02partial")
        raise OSError("disk full (simulated mid-write)")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == [LAST]


def test_interrupted_folder_write_leaves_the_old_folder(tmp_path):
    target = tmp_path / "adapter"
    with atomic_folder(target) as folder:
        (folder / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as folder:
        (folder / "a.txt").write_text("half")
        raise RuntimeError("killed while saving")
    assert (target / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    with atomic_folder(target) as folder:
        (folder / "b.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_rng_state_not_yet_applied_is_what_a_new_checkpoint_holds():
    from lco.checkpointing import RNGState

    saved = RNGState().state_dict()
    torch.rand(100)
    callback = RNGState()
    callback.load_state_dict(saved)
    assert torch.equal(callback.state_dict()["torch"], saved["torch"])  # a save before the first batch keeps it
    callback.on_train_batch_start(None, None, None, 0)
    assert torch.equal(torch.get_rng_state(), saved["torch"])  # applied at the first batch, then live again
    torch.rand(1)
    assert not torch.equal(callback.state_dict()["torch"], saved["torch"])


def test_ckpt_path_resolution(tmp_path):
    cfg = compose_train(tmp_path, [f"paths.log_dir={tmp_path / 'logs'}"])
    assert resume_checkpoint(cfg) is None  # a fresh run folder: nothing to resume
    runs = tmp_path / "logs" / "train" / "runs"
    for name in ("2026-01-01_00-00-00", "2026-01-02_00-00-00", "2026-01-03_00-00-00"):
        (runs / name / "checkpoints").mkdir(parents=True)
    for name in ("2026-01-01_00-00-00", "2026-01-02_00-00-00"):  # the newest run has no checkpoint yet
        torch.save({"state_dict": {}}, runs / name / "checkpoints" / LAST)
    cfg.ckpt_path = "last"
    assert resume_checkpoint(cfg) == runs / "2026-01-02_00-00-00" / "checkpoints" / LAST
    cfg.ckpt_path = str(runs / "2026-01-01_00-00-00")
    assert resume_checkpoint(cfg) == runs / "2026-01-01_00-00-00" / "checkpoints" / LAST
    cfg.ckpt_path = str(tmp_path)  # a folder that is neither a run folder nor a DeepSpeed checkpoint
    with pytest.raises(ConfigError, match="neither an lco run folder"):
        resume_checkpoint(cfg)
    cfg.ckpt_path = str(tmp_path / "nope.ckpt")
    with pytest.raises(ConfigError, match="nope.ckpt does not exist"):
        resume_checkpoint(cfg)
    cfg.ckpt_path, cfg.task_name = "last", "other"
    with pytest.raises(ConfigError, match="ckpt_path=last: no run under"):
        resume_checkpoint(cfg)
    own = Path(cfg.paths.output_dir) / "checkpoints"
    own.mkdir(parents=True)
    torch.save({"state_dict": {}}, own / LAST)
    cfg.ckpt_path = None
    assert resume_checkpoint(cfg) == own / LAST  # auto-resume: the run folder's own last.ckpt
    (own / LAST).write_bytes(b"half a file")  # not a checkpoint: refused with a message, never half-loaded
    with pytest.raises(ConfigError, match="does not load as a checkpoint with weights_only=True"):
        resume_checkpoint(cfg)
    cfg.auto_resume = False
    assert resume_checkpoint(cfg) is None
