"""Non-finite losses and weights: stop (or skip the step) instead of training on, and never checkpoint them.

``NonFiniteGuard(max_skips)`` is called by ``ContrastiveModule.training_step`` with each step's loss (a 0-d tensor)
before backward. A finite loss passes. A NaN or Inf loss is skipped while fewer than ``max_skips`` steps have been
skipped in this run (resumes included); past that, ``NonFiniteLoss`` stops the run. A skipped step runs a zero
loss on the trainable weights, whose gradients ``ContrastiveModule.on_before_optimizer_step`` drops, so nothing
updates (the LR schedule still advances). It is not ``return None``: Lightning refuses that under DDP. Under DDP every rank takes the same decision
(a min all-reduce of the finite flag), so no rank waits in a backward the others skipped.

``check_finite_weights(state_dict, step)`` raises ``NonFiniteLoss`` before a checkpoint holding NaN/Inf weights is
written, so ``last.ckpt`` is always the last good state.
"""

from __future__ import annotations

import torch
from pytorch_lightning.utilities import rank_zero_warn

from lco.errors import ConfigError, NonFiniteLoss

ADVICE = ("Usual causes: a learning rate too high for this batch size (optim.optimizer.lr), a temperature driven "
          "to its bound, fp16 overflow (use precision=bf16-mixed), or a degenerate batch (empty texts, broken "
          "media).")


class NonFiniteGuard:
    def __init__(self, max_skips: int = 0):
        if max_skips is None or int(max_skips) < 0:
            raise ConfigError(f"module.max_nonfinite_skips must be an integer >= 0, got {max_skips!r}")
        self.max_skips, self.skipped = int(max_skips), 0

    def __call__(self, loss: torch.Tensor, step: int, reduce=None) -> bool:
        """True when this step must be skipped; raises ``NonFiniteLoss`` when the allowance is used up.
        ``reduce``: a ``tensor -> tensor`` min over ranks (DDP) that makes the decision global."""
        finite = torch.isfinite(loss.detach()).float()
        if reduce is not None:
            finite = reduce(finite)
        if bool(finite):  # one host sync per step (the progress bar reads the loss each step anyway)
            return False
        if self.skipped < self.max_skips:
            self.skipped += 1
            rank_zero_warn(f"lco: train/loss is {loss.item()} at step {step}; skipped it (no update), "
                           f"{self.skipped} of module.max_nonfinite_skips={self.max_skips} used.")
            return True
        used = f" after skipping {self.skipped} such steps" if self.skipped else ""
        raise NonFiniteLoss(
            f"train/loss is {loss.item()} at step {step}{used}, so training stopped before applying it: the weights "
            "are those after the previous step, and the run folder's checkpoints/last.ckpt (if any) holds the last "
            f"good state. {ADVICE} To skip up to N such steps instead of stopping, set module.max_nonfinite_skips=N.")


def check_finite_weights(state_dict: dict, step: int) -> None:
    """Raise ``NonFiniteLoss`` naming the first tensor of ``state_dict`` that holds NaN/Inf."""
    for name, tensor in state_dict.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteLoss(
                f"weight {name} holds NaN/Inf at step {step}; this checkpoint was not written, so the run folder's "
                f"checkpoints/last.ckpt still holds the last good state. {ADVICE}")
