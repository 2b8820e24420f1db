"""The training step on a planned batch: plan on the host, embed the sides, call the loss.

``Step`` (``conf/step/default.yaml``) holds the step's knobs and is used by ``ContrastiveModule`` (under
Lightning) and by the bench's hand-written loop (``lco/bench/loop.py``), so both run the same computation:

- ``plan(batch, pad_id, token_ids, position_rows)``: a ``TripletCollator`` batch (CPU tensors) -> ``{"passes":
  [...], "sides": n, "rows": B, "modality", "tokens": {"real", "computed", "shared"}, "keys"}`` (``keys``: the
  collator's item content keys, for the loss). Each pass is ``{"inputs",
  "sides": [side index...], "sizes", "chunks": [...] or None, "restore", "packed", "prefix"}`` over the sides
  anchor, positive, negative. Text-only sides share one pass when padding allows (``fuse_max_padding``); with
  ``pack`` a text-only pass is packed without padding (``pack.py``, its items re-ordered to fill rows evenly), a
  pass with media too, its items in order (``pack_media.py``); with GradCache every pass is cut into chunks
  (``plan.py``, ``pack.chunk_rows``), and a padded text-only pass is first sorted by length so its chunks can be filled
  (``restore`` undoes either re-ordering). With ``share_prefix`` the tokens every item of a text-only pass begins
  with (the chat template's system turn and user header) are computed once per pass, whatever its chunks (``prefix.py``;
  ``prefix``: how many). ``tokens`` counts the batch's real tokens, the tokens its passes compute (padding
  included) and the real tokens a shared prefix spared (``real_fraction``: the share of computed tokens that are
  not padding). Python ints only: the step on the device never waits on the host.
- ``embed(embedder, planned)`` -> (anchor [B, D], positive [B, D], negative [B*K, D] or None): plain forward
  passes, or ``cached_embed`` (``gradcache.py``) for chunked ones.
- ``loss(embedder, loss_fn, planned)`` -> the scalar loss.
"""

from __future__ import annotations

import torch

from lco.errors import ConfigError
from lco.step.gradcache import cached_embed
from lco.step.pack import chunk_rows, pack
from lco.step.pack_media import LAYOUT_KEYS, pack_media
from lco.step.plan import TEXT_ONLY, fuse, plan_chunks, sort_by_length
from lco.step.prefix import common_prefix, drop_prefix, positions_after

MIN_PREFIX = 2  # shorter common prefixes are not worth the extra forward call
# strategies whose sharded parameters GradCache's re-forward inside backward has not been tested with
SHARDED = ("FSDP", "DeepSpeed")


def real_fraction(tokens: dict) -> float:
    """The share of a plan's computed tokens (``tokens``: its ``"tokens"``, or their sums) that are items' own,
    not padding (a shared prefix's spared tokens are not counted as computed, nor as real)."""
    return (tokens["real"] - tokens["shared"]) / tokens["computed"]


class Step:
    """The step's knobs (``conf/step/default.yaml``); the loss and gradients are the same whatever they are.

    ``fuse_max_padding``: text-only sides share one forward pass when the fused batch has at most this many times
    their own padded tokens (``None``: one pass per side, as the reference; with packing or GradCache every text
    side joins, since neither computes the padding). ``pack``: padding-free text passes (``pack.py``): items
    end to end in rows of ``pack_tokens`` tokens, attention kept inside each item; ``auto`` packs on CUDA
    (``setup``). Passes with media are packed too (``pack_media.py``). GradCache (``gradcache.py``):
    ``cache_chunk`` embeds this many items at a time (text chunks of shorter items hold more, up to the padded
    tokens of ``cache_chunk`` of the longest: ``plan.row_ranges``), or ``cache_tokens`` this many computed tokens
    at a time, and re-computes them chunk by chunk in backward, so activation memory is that of one chunk
    whatever the batch. ``None`` for both: no caching. ``share_prefix``: a text-only pass computes the tokens all
    its items begin with once (``prefix.py``; needs sdpa/eager attention and no activation checkpointing)."""

    def __init__(self, fuse_max_padding: float | None = 1.25, cache_chunk: int | None = None,
                 cache_tokens: int | None = None, pack: bool | str = "auto", pack_tokens: int = 512,
                 share_prefix: bool = False):
        for key, value, what in (("cache_chunk", cache_chunk, "GradCache items per chunk"),
                                 ("cache_tokens", cache_tokens, "GradCache tokens per chunk"),
                                 ("pack_tokens", pack_tokens, "tokens per packed row")):
            if (value is not None or key == "pack_tokens") and (isinstance(value, bool) or not isinstance(value, int)
                                                                 or value < 1):
                raise ConfigError(f"step.{key}={value!r} is not valid: {what} must be an integer >= 1"
                                  + ("." if key == "pack_tokens" else " (or null: no GradCache)."))
        if cache_chunk is not None and cache_tokens is not None:
            raise ConfigError(f"step.cache_chunk={cache_chunk} and step.cache_tokens={cache_tokens} are both set: "
                              "GradCache chunks are counted in items or in tokens, not both. Set one to null.")
        if pack not in (True, False, "auto"):
            raise ConfigError(f"step.pack={pack!r} is not valid: use true, false or auto (packs on CUDA).")
        if share_prefix not in (True, False):
            raise ConfigError(f"step.share_prefix={share_prefix!r} is not valid: use true or false.")
        self.share_prefix = share_prefix
        self.fuse_max_padding, self.cache_chunk, self.cache_tokens = fuse_max_padding, cache_chunk, cache_tokens
        self.pack, self.pack_tokens = pack, pack_tokens
        self.packs = pack is True  # resolved for ``auto`` by ``setup``

    def setup(self, device_type: str, family=None) -> None:
        """Resolve ``pack=auto`` for the device the step runs on (``cuda``, ``cpu``...) and the model ``family``
        (``lco.models.families.Family``): a decoder with linear-attention layers (``recurrent``) never packs,
        and refuses ``pack=true`` / ``share_prefix=true`` (``check_config`` says so before anything loads)."""
        if family is not None and family.recurrent:
            problems = recurrent_problems(family.name, self.pack, self.share_prefix)
            if problems:
                raise ConfigError(" ".join(problems))
            self.packs = False
            return
        self.packs = self.pack is True or (self.pack == "auto" and device_type == "cuda")

    @property
    def caches(self) -> bool:
        """Whether the step uses GradCache."""
        return self.cache_chunk is not None or self.cache_tokens is not None

    def check_strategy(self, strategy: str) -> None:
        """Refuse GradCache under a sharding strategy (``strategy``: its class path or Lightning name)."""
        sharded = next((s for s in SHARDED if s.lower() in strategy.lower()), None)
        if self.caches and sharded:
            knob = (f"step.cache_chunk={self.cache_chunk}" if self.cache_chunk
                    else f"step.cache_tokens={self.cache_tokens}")
            raise ConfigError(
                f"{knob} (GradCache) is supported with trainer=cpu, gpu, ddp and "
                f"ddp_cpu, not with {sharded}: its re-forward inside backward would meet sharded parameters lco "
                "has not tested. Use trainer=ddp (LoRA's trainable weights are small), or set "
                "step.cache_chunk=null and step.cache_tokens=null.")

    def plan(self, batch: dict, pad_id: int, token_ids: dict[str, int | None], position_rows: int = 1) -> dict:
        """A collated batch -> its planned passes (see the module docstring); a planned batch is returned as is.
        ``pad_id``: the tokenizer's pad id; ``token_ids``: media kind -> the model's placeholder token id;
        ``position_rows``: rows of the model's ``position_ids`` (4 for multimodal rotary), for packing."""
        if "passes" in batch:
            return batch
        sides = [batch["anchor"], batch["positive"]] + ([batch["negative"]] if batch["negative"] is not None else [])
        join_all = (self.caches or self.packs) and self.fuse_max_padding is not None
        passes, real, computed, shared = [], 0, 0, 0
        for inputs, members in fuse(sides, pad_id, float("inf") if join_all else self.fuse_max_padding):
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
            text, restore = set(inputs) <= TEXT_ONLY, None
            budget = self.cache_tokens or (self.cache_chunk and self.cache_chunk * max(lengths))
            width = min(self.pack_tokens, budget or self.pack_tokens)  # of a packed row
            prefix = common_prefix(inputs) if self.share_prefix and text else 0
            prefix = prefix if prefix >= MIN_PREFIX else 0
            if prefix:  # the rest of each item, positions after the prefix; padded, or packed below
                inputs, prefix_ids = drop_prefix(inputs, prefix)
            if self.packs and text:
                inputs, spans, restore = pack(inputs, width, pad_id, position_rows)
                if prefix:
                    inputs["position_ids"] += prefix
                chunks = chunk_rows(spans, inputs["input_ids"].shape[1], budget) if budget else None
                cost = inputs["input_ids"].numel()
            elif self.packs:  # media, in order: the layout here, rotary positions at embed time
                inputs, spans = pack_media(inputs, width)
                chunks = chunk_rows(spans, inputs["pack_index"].shape[1], budget) if budget else None
                if chunks:  # each chunk also takes its items' media tensors
                    padded = {k: v for k, v in inputs.items() if k not in LAYOUT_KEYS}
                    ranges = plan_chunks(padded, None, token_ids, ranges=[c["rows"] for c in chunks])
                    chunks = [{**c, "media": r["media"]} for c, r in zip(chunks, ranges)]
                cost = inputs["pack_index"].numel()
            else:
                if prefix:
                    inputs["position_ids"] = positions_after(inputs["attention_mask"], prefix, position_rows)
                if self.caches and text:  # sorted by length, chunks carry little padding and can be
                    inputs, restore = sort_by_length(inputs)  # filled with more short rows (plan_chunks' fill)
                # behind a shared prefix, chunks hold as many rows as the padded tokens of cache_chunk of the
                # longest whole items (the footprint without sharing): the prefix's saving buys fewer passes
                chunks = None if not self.caches else plan_chunks(
                    inputs, self.cache_chunk, token_ids, fill=restore is not None,
                    budget=budget if prefix else self.cache_tokens)
                padded_width = inputs["input_ids"].shape[1]
                cost = (sum((c["rows"][1] - c["rows"][0]) * (padded_width - c["first_col"]) for c in chunks)
                        if chunks else len(lengths) * padded_width)
            if prefix:  # computed once per pass, GradCache chunks or not
                inputs["prefix_ids"] = prefix_ids
                cost, shared = cost + prefix, shared + (len(lengths) - 1) * prefix
            real, computed = real + sum(lengths), computed + cost
            passes.append({"inputs": inputs, "sides": members, "chunks": chunks, "restore": restore,
                           "packed": "last_index" in inputs, "prefix": prefix,
                           "sizes": [sides[i]["input_ids"].shape[0] for i in members]})
        return {"passes": passes, "sides": len(sides), "rows": batch["anchor"]["input_ids"].shape[0],
                "modality": batch["modality"], "tokens": {"real": real, "computed": computed, "shared": shared},
                "keys": batch.get("keys")}

    @staticmethod
    def embed(embedder, planned: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Embeddings of each side of a planned batch (on the embedder's device)."""
        out: list[torch.Tensor | None] = [None] * planned["sides"]
        for step in planned["passes"]:
            if step["chunks"] is None:
                vectors = embedder(step["inputs"])
            else:
                trainable = [p for p in embedder.parameters() if p.requires_grad]
                head = embedder.prefix_states if step["prefix"] else None  # the shared prefix: once per pass
                vectors = cached_embed(embedder, step["inputs"], step["chunks"], trainable, head)
            if step["restore"] is not None:  # rows were re-ordered: by length (GradCache), or to fill packed rows
                vectors = vectors[step["restore"]]
            for side, part in zip(step["sides"], vectors.split(step["sizes"])):
                out[side] = part
        return out[0], out[1], out[2] if planned["sides"] == 3 else None

    def loss(self, embedder, loss_fn, planned: dict) -> torch.Tensor:
        """The training loss (0-d tensor) of a planned batch; its items' content keys go to the loss, which may
        mask duplicates (``InfoNCE.mask_duplicates``)."""
        return loss_fn(*self.embed(embedder, planned), keys=planned.get("keys"))

    def __repr__(self) -> str:
        return (f"Step(fuse_max_padding={self.fuse_max_padding}, cache_chunk={self.cache_chunk}, cache_tokens="
                f"{self.cache_tokens}, pack={self.pack}, pack_tokens={self.pack_tokens}, "
                f"share_prefix={self.share_prefix})")


def recurrent_problems(family: str, pack, share_prefix) -> list[str]:
    """Why ``step.pack`` / ``step.share_prefix`` cannot run on ``family``'s linear-attention (Gated DeltaNet) layers:
    their causal convolution and recurrence run along the whole row, so items packed end to end would read each
    other (transformers' PyTorch path ignores the packed items' boundaries), and a prefix computed once would need
    its recurrent and convolution states handed to every row, which lco's prefix (keys and values) does not do."""
    problems = []
    if pack is True:
        problems.append(f"step.pack=true cannot run on model.family={family}: its linear-attention layers carry a "
                        "convolution and a recurrence along the row, so packed items would leak into each other. "
                        "Set step.pack=false or auto (auto never packs this family).")
    if share_prefix is True:
        problems.append(f"step.share_prefix=true cannot run on model.family={family}: its linear-attention layers "
                        "would need the prefix's recurrent state, not only keys and values. Set "
                        "step.share_prefix=false.")
    return problems
