"""The training step on a planned batch: plan on the host, embed the sides, call the loss.

``Step`` (``conf/step/default.yaml``) holds the step's knobs and is used by ``ContrastiveModule`` (under
Lightning) and by the bench's hand-written loop (``lco/bench/loop.py``), so both run the same computation:

- ``plan(batch, pad_id, token_ids)``: a ``TripletCollator`` batch (CPU tensors) -> ``{"passes": [...], "sides":
  n, "rows": B, "modality"}``. Each pass is ``{"inputs", "sides": [side index...], "sizes", "chunks": [...] or
  None, "restore"}`` over the sides anchor, positive, negative. Text-only sides share one pass when padding
  allows (``fuse_max_padding``); with ``cache_chunk`` every pass is cut into GradCache chunks (``plan.py``), and
  a text-only pass is first sorted by length (``restore`` undoes it) so its chunks can be filled. Python ints
  only: the step on the device never waits on the host.
- ``embed(embedder, planned)`` -> (anchor [B, D], positive [B, D], negative [B*K, D] or None): plain forward
  passes, or ``cached_embed`` (``gradcache.py``) for chunked ones.
- ``loss(embedder, loss_fn, planned)`` -> the scalar loss.
"""

from __future__ import annotations

import torch

from lco.errors import ConfigError
from lco.step.gradcache import cached_embed
from lco.step.plan import TEXT_ONLY, fuse, plan_chunks, sort_by_length

# strategies whose sharded parameters GradCache's re-forward inside backward has not been tested with
SHARDED = ("FSDP", "DeepSpeed")


class Step:
    """``fuse_max_padding``: text-only sides share one forward pass when the fused batch has at most this many
    times their own padded tokens (``None``: one pass per side, as the reference). ``cache_chunk``: GradCache,
    embedding this many items at a time (text chunks of shorter items hold more, up to the padded tokens of
    ``cache_chunk`` of the longest: ``plan.row_ranges``) and re-computing them chunk by chunk in backward, so
    activation memory is that of one chunk whatever the batch; the loss and gradients are unchanged. ``None``:
    no caching."""

    def __init__(self, fuse_max_padding: float | None = 1.25, cache_chunk: int | None = None):
        if cache_chunk is not None and (isinstance(cache_chunk, bool) or not isinstance(cache_chunk, int)
                                        or cache_chunk < 1):
            raise ConfigError(f"step.cache_chunk={cache_chunk!r} is not valid: GradCache items per chunk must be an "
                              "integer >= 1 (or null: no GradCache).")
        self.fuse_max_padding, self.cache_chunk = fuse_max_padding, cache_chunk

    def check_strategy(self, strategy: str) -> None:
        """Refuse GradCache under a sharding strategy (``strategy``: its class path or Lightning name)."""
        sharded = next((s for s in SHARDED if s.lower() in strategy.lower()), None)
        if self.cache_chunk and sharded:
            raise ConfigError(
                f"step.cache_chunk={self.cache_chunk} (GradCache) is supported with trainer=cpu, gpu, ddp and "
                f"ddp_cpu, not with {sharded}: its re-forward inside backward would meet sharded parameters lco "
                "has not tested. Use trainer=ddp (LoRA's trainable weights are small), or set step.cache_chunk=null.")

    def plan(self, batch: dict, pad_id: int, token_ids: dict[str, int | None]) -> dict:
        """A collated batch -> its planned passes (see the module docstring); a planned batch is returned as is.
        ``pad_id``: the tokenizer's pad id; ``token_ids``: media kind -> the model's placeholder token id."""
        if "passes" in batch:
            return batch
        sides = [batch["anchor"], batch["positive"]] + ([batch["negative"]] if batch["negative"] is not None else [])
        chunk = self.cache_chunk
        # with chunks, joining text sides pads no forward pass (each chunk drops its own), so fusing joins them all
        max_padding = float("inf") if chunk and self.fuse_max_padding is not None else self.fuse_max_padding
        passes = []
        for inputs, members in fuse(sides, pad_id, max_padding):
            restore = None
            if chunk and set(inputs) <= TEXT_ONLY:  # sorted by length, chunks carry little padding and can be
                inputs, restore = sort_by_length(inputs)  # filled with more short rows (plan_chunks' fill)
            chunks = plan_chunks(inputs, chunk, token_ids, fill=restore is not None) if chunk else None
            passes.append({"inputs": inputs, "sides": members, "chunks": chunks, "restore": restore,
                           "sizes": [sides[i]["input_ids"].shape[0] for i in members]})
        return {"passes": passes, "sides": len(sides), "rows": batch["anchor"]["input_ids"].shape[0],
                "modality": batch["modality"]}

    @staticmethod
    def embed(embedder, planned: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Embeddings of each side of a planned batch (on the embedder's device)."""
        out: list[torch.Tensor | None] = [None] * planned["sides"]
        for step in planned["passes"]:
            if step["chunks"] is None:
                vectors = embedder(step["inputs"])
            else:
                trainable = [p for p in embedder.parameters() if p.requires_grad]
                vectors = cached_embed(embedder, step["inputs"], step["chunks"], trainable)
                if step["restore"] is not None:
                    vectors = vectors[step["restore"]]
            for side, part in zip(step["sides"], vectors.split(step["sizes"])):
                out[side] = part
        return out[0], out[1], out[2] if planned["sides"] == 3 else None

    def loss(self, embedder, loss_fn, planned: dict) -> torch.Tensor:
        """The training loss (0-d tensor) of a planned batch."""
        return loss_fn(*self.embed(embedder, planned))

    def __repr__(self) -> str:
        return f"Step(fuse_max_padding={self.fuse_max_padding}, cache_chunk={self.cache_chunk})"
