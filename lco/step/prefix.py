"""A shared prefix: the tokens every item of a text pass begins with, computed once per pass (``step.share_prefix``).

With a chat template every item opens with the same tokens: the system turn and ``<|im_start|>user\\n`` (14 of
the ~45 tokens of a 12-word All-NLI item with Qwen2.5's template). Under causal attention their hidden states
do not depend on what follows, so the pass computes them once and every item attends to their keys and values:

- ``common_prefix(batch)`` (host): the length P of the longest token prefix all real items share, at most the
  shortest item's length minus one (each item keeps its last token, where it is pooled).
- ``drop_prefix(batch, size)`` (host): the padded batch without those P tokens (the columns only padding then
  holds are dropped), and ``prefix_ids`` [1, P]. The step packs the rest (``pack.pack``, positions then shifted
  by P), or keeps it padded with ``positions_after`` (P, P + 1, ... per item) and chunks it as any padded batch.
- ``prefixed_forward(headless, inputs)`` (device): the prefix through the decoder once (batch 1, a transformers
  ``DynamicCache``), its keys and values expanded (a view) to every row, then the rows with a 4-D mask: each token
  sees the whole prefix and the earlier tokens of its own item (a packed row: ``item_ids``; a padded row: its
  ``attention_mask``). Returns the rows' final states [R, W, D] and the prefix's [P, D] (mean pooling counts
  them).

Autograd flows through the expanded keys and values into the one prefix computation, so the loss and the
gradients equal those of the padded pass (fp32, CPU: ``tests/test_prefix.py``). Two limits, both refused by
``lco/config.py``: activation checkpointing (transformers drops the cache inside a checkpointed layer) and
attention kernels that take no 4-D mask (flash attention). With LoRA dropout the prefix's dropout mask is drawn
once per pass (whatever its GradCache chunks) instead of once per item: the same rate, shared by the pass's items.

Hand-written: transformers shares a prefix for generation (a cache reused across ``generate`` calls) but has no
training path where several sequences attend to one prefix with gradients.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from lco.errors import BatchLayoutError
from lco.step.pack import real_lengths

MASKED_ATTENTION = ("sdpa", "eager")  # implementations that take a 4-D mask as given


def common_prefix(batch: dict) -> int:
    """Tokens every item of a padded text batch (``input_ids``, ``attention_mask`` [N, T], real tokens contiguous)
    begins with, capped at the shortest item's length minus one; 0 for a single item."""
    lengths = real_lengths(batch)
    shortest = int(lengths.min())
    if batch["input_ids"].shape[0] < 2 or shortest < 2:
        return 0
    starts = batch["attention_mask"].int().argmax(dim=1)  # first real token (left or right padding)
    heads = batch["input_ids"].gather(1, starts[:, None] + torch.arange(shortest - 1))
    same = (heads == heads[:1]).all(dim=0).int()
    return int(same.cumprod(0).sum())


def drop_prefix(batch: dict, size: int) -> tuple[dict, torch.Tensor]:
    """(the padded batch with each item's first ``size`` real tokens turned into padding and the columns then all
    padding dropped, ``prefix_ids`` [1, size])."""
    mask = batch["attention_mask"].bool()
    start = int(mask[0].int().argmax())
    prefix = batch["input_ids"][:1, start:start + size]
    mask = mask & (mask.cumsum(dim=1) > size)
    used = mask.any(dim=0).nonzero()
    first, last = int(used[0]), int(used[-1]) + 1
    rest = {key: value[:, first:last] for key, value in batch.items()}
    rest["attention_mask"] = mask[:, first:last].long()
    return rest, prefix


def positions_after(attention_mask: torch.Tensor, size: int, position_rows: int = 1) -> torch.Tensor:
    """``position_ids`` [N, T] (or [position_rows, N, T]) of a padded batch behind a ``size``-token prefix:
    P, P + 1, ... over each row's real tokens (padding gets P)."""
    positions = size + (attention_mask.cumsum(dim=1) - 1).clamp_min(0)
    return positions if position_rows == 1 else positions.expand(position_rows, *positions.shape).clone()


def attention_mask(item_ids: torch.Tensor, size: int, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4-D mask [R, 1, W, size + W] of rows ``item_ids`` [R, W] (-1: padding) behind a ``size``-token prefix:
    every token sees the prefix and the earlier tokens of its own item (padding sees the prefix only). Boolean
    (True: attend) for sdpa; additive (0 or the dtype's minimum) for eager attention."""
    if implementation not in MASKED_ATTENTION:
        raise BatchLayoutError(f"step.share_prefix needs attention that takes a 4-D mask ("
                               f"{', '.join(MASKED_ATTENTION)}), not {implementation}. Set "
                               "model.attn_implementation=sdpa or step.share_prefix=false.")
    rows, width = item_ids.shape
    causal = torch.ones(width, width, dtype=torch.bool, device=item_ids.device).tril()
    own = (item_ids[:, :, None] == item_ids[:, None, :]) & (item_ids[:, :, None] >= 0) & causal
    allowed = torch.cat([own.new_ones(rows, width, size), own], dim=2)[:, None]
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def prefix_states(headless, inputs: dict) -> tuple[torch.Tensor, ...]:
    """``inputs``' ``prefix_ids`` [1, P] through the decoder once -> (the prefix's final states [P, D], then each
    layer's keys and values [1, heads, P, head_dim]): what every row of the pass attends to (``prefixed_forward``).
    GradCache computes them once per pass and hands them to each chunk (``gradcache.cached_embed``)."""
    prefix, positions = inputs["prefix_ids"], inputs["position_ids"]
    size = prefix.shape[1]
    first = torch.arange(size, device=prefix.device).expand(*positions.shape[:-2], 1, size)
    extra = {"mm_token_type_ids": torch.zeros_like(prefix)} if "mm_token_type_ids" in inputs else {}
    cache = DynamicCache(config=headless.config)
    head = headless(input_ids=prefix, position_ids=first, cache=cache, use_cache=True, return_dict=True, **extra)
    if cache.get_seq_length() != size:
        raise BatchLayoutError("the decoder did not keep the shared prefix's keys and values (activation "
                               "checkpointing drops them): set module.gradient_checkpointing=false or "
                               "step.share_prefix=false.")
    return (head.last_hidden_state[0], *(t for layer in cache.layers for t in (layer.keys, layer.values)))


def prefixed_forward(headless, inputs: dict, states: tuple[torch.Tensor, ...] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``inputs``: rows (``input_ids``, ``position_ids`` starting at P, ``item_ids`` if packed else
    ``attention_mask``, optional ``mm_token_type_ids``) and ``prefix_ids`` [1, P]; ``states``: the prefix's
    ``prefix_states`` if already computed -> (final states of the rows [R, W, D], of the prefix [P, D])."""
    states = prefix_states(headless, inputs) if states is None else states
    size, rows = inputs["prefix_ids"].shape[1], inputs["input_ids"].shape[0]
    cache = DynamicCache(config=headless.config)
    for i, layer in enumerate(cache.layers):  # a view per layer: every row attends to the same keys and values
        keys, values = states[1 + 2 * i], states[2 + 2 * i]
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = (t.expand(rows, *t.shape[1:]) for t in (keys, values))
    dtype = headless.get_input_embeddings().weight.dtype
    items = inputs["item_ids"] if "item_ids" in inputs else inputs["attention_mask"].long() - 1  # a row: item 0
    mask = attention_mask(items, size, headless.config._attn_implementation, dtype)
    extra = {"mm_token_type_ids": inputs["mm_token_type_ids"]} if "mm_token_type_ids" in inputs else {}
    out = headless(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], attention_mask=mask,
                   cache=cache, use_cache=True, return_dict=True, **extra)
    return out.last_hidden_state, states[0]
