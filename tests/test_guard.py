"""NaN/Inf losses stop the run (or skip the step, up to max_nonfinite_skips); non-finite weights are never
checkpointed, so last.ckpt stays the last good state."""

import pytest
import torch

from lco.errors import NonFiniteLoss
from lco.guard import NonFiniteGuard, check_finite_weights
from lco.module import ContrastiveModule
from lco.train import run
from tests.conftest import compose_train

RUN = ["model=tiny_text", "data=scenes", "data.sources.scenes.n=120", "data.val_size=24", "data.batch_size=8",
       "trainer.max_steps=8", "trainer.max_epochs=-1", "callbacks.model_checkpoint.every_n_train_steps=1",
       "validate_before=false", "logger=none"]


@pytest.fixture
def nan_at(monkeypatch):
    """Make the loss NaN at the given optimizer steps (fault injection into the real training step)."""
    def install(*steps):
        real = ContrastiveModule.batch_loss

        def batch_loss(self, batch):
            loss = real(self, batch)
            return loss * float("nan") if self.trainer is not None and self.global_step in steps else loss

        monkeypatch.setattr(ContrastiveModule, "batch_loss", batch_loss)
    return install


def _ckpt(tmp_path, name):
    return torch.load(tmp_path / "checkpoints" / name, weights_only=True)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, nan_at):
    nan_at(3)
    with pytest.raises(NonFiniteLoss, match=r"train/loss is nan at step 3, so training stopped.*module.max_nonfinite_skips=N"):
        run(compose_train(tmp_path, RUN))
    last = _ckpt(tmp_path, "last.ckpt")
    assert last["global_step"] == 3 and all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert not (tmp_path / "adapter").exists()  # a failed run writes no final adapter


def test_skips_up_to_n_nonfinite_steps_without_updating(tmp_path, nan_at):
    nan_at(3, 5)
    run(compose_train(tmp_path, RUN + ["module.max_nonfinite_skips=2"]))
    steps = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert "step000008.ckpt" in steps  # the run went to its end
    lora = lambda ckpt: {k: v for k, v in ckpt["state_dict"].items() if "lora_" in k}  # noqa: E731
    before, after = lora(_ckpt(tmp_path, "step000003.ckpt")), lora(_ckpt(tmp_path, "step000004.ckpt"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the NaN step changed nothing
    nxt = lora(_ckpt(tmp_path, "step000007.ckpt"))
    assert any(not torch.equal(after[k], nxt[k]) for k in after)  # finite steps still train


def test_one_more_nonfinite_step_than_allowed_stops(tmp_path, nan_at):
    nan_at(2, 3, 4)
    with pytest.raises(NonFiniteLoss, match="at step 4 after skipping 2 such steps"):
        run(compose_train(tmp_path, RUN + ["module.max_nonfinite_skips=2"]))


def test_guard_and_weight_check_units():
    guard = NonFiniteGuard(1)
    assert guard(torch.tensor(0.5), 0) is False
    assert guard(torch.tensor(float("inf")), 1) is True
    with pytest.raises(NonFiniteLoss, match="train/loss is inf at step 2 after skipping 1"):
        guard(torch.tensor(float("inf")), 2)
    with pytest.raises(ValueError, match="max_nonfinite_skips must be an integer >= 0"):
        NonFiniteGuard(-1)
    check_finite_weights({"a": torch.ones(2), "steps": 3}, 5)
    with pytest.raises(NonFiniteLoss, match="weight b holds NaN/Inf at step 5; this checkpoint was not written"):
        check_finite_weights({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}, 5)


LAUNCHER = '''
import sys
from lco.module import ContrastiveModule
real = ContrastiveModule.batch_loss
def batch_loss(self, batch):  # NaN on rank 1 only, at step 2: rank 0 must skip with it, or DDP would hang
    loss = real(self, batch)
    return loss * float("nan") if self.global_rank == 1 and self.global_step == 2 else loss
ContrastiveModule.batch_loss = batch_loss
from lco.train import main
main()
'''


def test_nan_on_one_ddp_rank_skips_the_step_on_every_rank(tmp_path):
    """Under `trainer=ddp_cpu` (2 gloo ranks) a NaN loss on rank 1 alone is skipped on both ranks (the min
    all-reduce of the guard): the run ends, and step 2 changed no weight."""
    import os
    import subprocess
    import sys

    script = tmp_path / "launch.py"  # Lightning's DDP launcher re-runs this script for rank 1, patch included
    script.write_text(LAUNCHER)
    done = subprocess.run([sys.executable, str(script), *RUN, "trainer=ddp_cpu", "data.batch_size=4",
                           "trainer.max_steps=4", "module.max_nonfinite_skips=1", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300, cwd=os.getcwd(),
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ckpts = tmp_path / "run" / "checkpoints"
    lora = lambda name: {k: v for k, v in torch.load(ckpts / name, weights_only=True)["state_dict"].items()  # noqa: E731
                         if "lora_" in k}
    before, after, last = lora("step000002.ckpt"), lora("step000003.ckpt"), lora("step000004.ckpt")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the NaN step updated nothing, on any rank
    assert any(not torch.equal(after[k], last[k]) for k in after)
