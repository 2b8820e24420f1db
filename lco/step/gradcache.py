"""GradCache: the contrastive loss over a large batch with activation memory of one chunk.

``cached_embed(embed, batch, chunks)`` returns embeddings [N, D] of the whole batch that take part in autograd
like ``embed(batch)`` would, but are computed chunk by chunk without keeping graphs (``chunks`` from
``lco.step.plan.plan_chunks``). When the loss's backward reaches them, each chunk is embedded again,
this time with a graph, under the RNG state (dropout masks) and autocast setting its first pass used, and
backpropagated with its slice of the embedding gradient (Gao et al. 2021, "Scaling Deep Contrastive Learning
Batch Size under Memory Limited Setup"). Parameter gradients equal those of embedding the same chunks with
graphs kept; only one chunk's activations are alive at a time.

The replay sums each chunk's parameter gradients (``torch.autograd.grad``) and hands the totals to autograd as
the gradients of ``params``, which are inputs of the cached node. So every trainable parameter receives its
gradient exactly once per backward, however many chunks there were, and DDP's gradient hooks fire once as in
the plain path (no ``static_graph``, no "marked ready twice", batches may differ in chunk count). The cost is
one extra buffer the size of the trainable parameters' gradients (LoRA: small).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lco.step.plan import take


class RngState:
    """The CPU (and, for a CUDA device, that device's) random state at one moment."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _accumulate(totals: list[torch.Tensor | None], grads) -> None:
    """Add ``grads`` (None where unused) into ``totals`` in place."""
    for i, g in enumerate(grads):
        if g is not None:
            totals[i] = g if totals[i] is None else totals[i].add_(g)


class _Replay(torch.autograd.Function):
    """Identity on the cached embeddings whose backward re-runs the chunks and backpropagates through them."""

    @staticmethod
    def forward(ctx, embeddings: torch.Tensor, replay: Callable, *params: torch.Tensor) -> torch.Tensor:
        ctx.replay = replay
        return embeddings.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None, None, *ctx.replay(grad))


def cached_embed(embed: Callable[..., torch.Tensor], batch: dict, chunks: list[dict],
                 params: list[torch.Tensor], head: Callable[[dict], tuple[torch.Tensor, ...]] | None = None
                 ) -> torch.Tensor:
    """Embeddings [N, D] of ``batch`` in ``chunks`` (row ranges covering 0..N in order), GradCache-style;
    ``params`` are the trainable parameters ``embed`` uses (they receive the summed gradient of all chunks).

    ``head``: for a pass behind a shared prefix (``lco/step/prefix.py``), ``batch`` -> the prefix's states,
    computed once per pass and handed to every chunk (``embed(chunk, states)``). In the replay they are
    computed once more with a graph; each chunk backpropagates into detached copies of them, and their summed
    gradients go through the prefix's graph once at the end.

    Outside autograd (no grad enabled) this is simply the chunked forward.
    """
    if not torch.is_grad_enabled():
        shared = () if head is None else (head(batch),)
        return torch.cat([embed(take(batch, c), *shared) for c in chunks])
    device = batch["input_ids"].device
    autocast = {"device_type": device.type, "enabled": torch.is_autocast_enabled(device.type),
                "dtype": torch.get_autocast_dtype(device.type)}
    states, outputs = [], []
    with torch.no_grad():
        first = RngState(device)
        shared = () if head is None else (head(batch),)
        for chunk in chunks:
            states.append(RngState(device))
            outputs.append(embed(take(batch, chunk), *shared))

    def replay(grad: torch.Tensor) -> list[torch.Tensor | None]:
        totals: list[torch.Tensor | None] = [None] * len(params)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type), torch.enable_grad():
            prefix, leaves = (), []
            if head is not None:  # the prefix with its graph, once; chunks see detached leaves of it
                first.restore()
                with torch.autocast(**autocast):
                    prefix = head(batch)
                leaves = [t.detach().requires_grad_(t.requires_grad) for t in prefix]
            live = [t for t in leaves if t.requires_grad]  # a frozen decoder (linear probe): none
            sums: list[torch.Tensor | None] = [None] * len(live)
            for chunk, state in zip(chunks, states):
                state.restore()
                with torch.autocast(**autocast):
                    out = embed(take(batch, chunk), *((tuple(leaves),) if leaves else ()))
                start, end = chunk["rows"]
                grads = torch.autograd.grad(out, params + live, grad[start:end].to(out.dtype), allow_unused=True)
                _accumulate(totals, grads[:len(params)])
                _accumulate(sums, grads[len(params):])
            used = [(t, g) for t, g in zip([t for t in prefix if t.requires_grad], sums) if g is not None]
            if used:  # the prefix's share, through its graph once
                grads = torch.autograd.grad([t for t, _ in used], params, [g for _, g in used], allow_unused=True)
                _accumulate(totals, grads)
        return totals

    cached = torch.cat(outputs)
    return _Replay.apply(cached.detach().requires_grad_(), replay, *params)
