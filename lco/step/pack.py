"""Padding-free packing of a text-only forward pass: items laid end to end in rows of a token budget.

``pack(batch, width, pad_id, position_rows)`` takes a left-padded text-only processor batch (``input_ids``,
``attention_mask``, optional ``mm_token_type_ids``, all [N, T]) and returns the same N items packed:

- ``input_ids`` [R, W]: items' real tokens end to end, row after row (``assign_rows``: rows of at most ``width``
  tokens, evenly filled; the items are re-ordered for that, and ``restore`` undoes it), each row's tail ``pad_id``;
- ``position_ids`` [R, W] (``position_rows=1``), or [4, R, W] for the Qwen VL/Omni multimodal rotary layout (text
  positions, then temporal/height/width, all equal for text): 0, 1, ... within each item, and again over a row's
  padding tail;
- ``mm_token_type_ids`` [R, W] when the batch has it (0 = text, as for padding);
- ``item_ids`` [R, W] (long): the item each slot holds, -1 for padding, and ``last_index`` [N] (long): the flat
  index (row x W + column) of each item's last token. The ``Embedder`` pools with these and does not pass them on.

No ``attention_mask``: transformers (5.x) then reads the packing from ``position_ids`` (a position that does not
follow its left neighbour by one starts a new sequence: ``masking_utils.find_packed_sequence_indices``) and keeps
attention inside each item: a block-diagonal causal mask for sdpa/eager/flex attention, varlen kernels for flash
attention. Every item sees the tokens and rotary positions it has in the padded batch, so its embedding and
gradients are the same (``tests/test_packing.py``); only the padding is no longer computed.

Hand-written rather than transformers' ``DataCollatorWithFlattening``: that collator makes one row of a whole
batch from unpadded features, while the step packs an already collated, fused pass into rows of a budget (and
GradCache chunks of rows), and needs each item's last-token index for pooling.
"""

from __future__ import annotations

import heapq

import torch

from lco.errors import BatchLayoutError

PACK_KEYS = ("item_ids", "last_index")  # the Embedder's, not the model's


def real_lengths(batch: dict) -> torch.Tensor:
    """Real tokens per item [N] of a padded batch; every item must have one to be packed."""
    lengths = batch["attention_mask"].sum(dim=1)
    if (lengths == 0).any():
        raise BatchLayoutError("a row of the batch has no real token (attention_mask all 0); it cannot be packed")
    return lengths


def assign_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Items (indices into ``lengths``) per packed row: ``ceil(total / width)`` rows of at most ``width`` tokens
    (or the longest item's, if longer), filled evenly, since the packed tensor is as wide as its fullest row.
    Longest first, each item goes to the least-filled row (the LPT rule of multiprocessor scheduling), or to a new
    row when it fits none."""
    width = max(width, max(lengths, default=0))
    heap = [(0, r) for r in range(-(-sum(lengths) // width))]
    rows: list[list[int]] = [[] for _ in heap]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fill, r = heapq.heappop(heap)
        if fill + lengths[i] > width:  # the least-filled row is too full: so is every other
            heapq.heappush(heap, (fill, r))
            fill, r = 0, len(rows)
            rows.append([])
        rows[r].append(i)
        heapq.heappush(heap, (fill + lengths[i], r))
    return [row for row in rows if row]


def in_order_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Items per packed row, keeping their order (media passes: the model fills image/audio/video placeholders
    with the batch's media in order): next fit into rows of at most ``width`` tokens (or the longest item's),
    each row taking items while that brings it closer to an equal share of the tokens left."""
    total = sum(lengths)
    width = max(width, max(lengths, default=0))
    rows_left, left, rows = max(-(-total // width), 1), total, [[]]
    used = 0
    for i, n in enumerate(lengths):
        if rows[-1] and (used + n > width or used + n / 2 > left / rows_left):
            left, rows_left, used = left - used, max(rows_left - 1, 1), 0
            rows.append([])
        rows[-1].append(i)
        used += n
    return [row for row in rows if row]


def layout(lengths: torch.Tensor, rows_of: list[list[int]]) -> dict:
    """Where the real tokens of items of ``lengths`` [N] go when laid end to end row by row, ``rows_of`` holding
    consecutive items in that order (only its row sizes are read): ``rows``, ``cols`` (the fullest row), ``where``
    ((row, column) per token, tokens in item order), ``token_item`` and ``token_pos`` per token, ``fills`` per
    row, ``last_index`` [N] (flat index of each item's last token) and ``spans`` (each row's item range)."""
    ends = torch.tensor([len(row) for row in rows_of]).cumsum(0).tolist()
    spans = list(zip([0] + ends[:-1], ends))
    fills = [int(lengths[a:b].sum()) for a, b in spans]
    rows, cols = len(spans), max(fills)
    item_row = torch.repeat_interleave(torch.arange(rows), torch.tensor([b - a for a, b in spans]))
    starts = lengths.cumsum(0) - lengths  # each item's first token in the flat token order
    item_col = starts - torch.tensor([int(starts[a]) for a, _ in spans])[item_row]
    token_item = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    token_pos = torch.arange(int(lengths.sum())) - starts[token_item]
    return {"rows": rows, "cols": cols, "where": (item_row[token_item], item_col[token_item] + token_pos),
            "token_item": token_item, "token_pos": token_pos, "fills": fills, "spans": spans,
            "last_index": item_row * cols + item_col + lengths - 1}


def positions_and_items(lay: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Text positions [R, W] (0, 1, ... per item, and over each row's padding tail) and ``item_ids`` [R, W]."""
    rows, cols, where = lay["rows"], lay["cols"], lay["where"]
    positions = torch.arange(cols).expand(rows, cols) - torch.tensor(lay["fills"])[:, None]
    positions[where] = lay["token_pos"]
    item_ids = torch.full((rows, cols), -1, dtype=torch.long)
    item_ids[where] = lay["token_item"]
    return positions, item_ids


def pack(batch: dict, width: int, pad_id: int, position_rows: int = 1) -> tuple[dict, list[tuple[int, int]],
                                                                                 torch.Tensor | None]:
    """The packed batch (see the module docstring), its rows' item ranges, and ``restore``: the items are packed
    row by row in the order ``assign_rows`` chose, so ``embeddings[restore]`` is in the batch's order (None: the
    same order). Host-side, CPU tensors."""
    lengths = real_lengths(batch)
    rows_of = assign_rows(lengths.tolist(), width)
    order = torch.tensor([i for row in rows_of for i in row])
    restore = None if torch.equal(order, torch.arange(len(order))) else torch.argsort(order)
    batch, lengths = {key: value[order] for key, value in batch.items()}, lengths[order]
    mask = batch["attention_mask"].bool()
    lay = layout(lengths, rows_of)
    out = {"input_ids": batch["input_ids"].new_full((lay["rows"], lay["cols"]), pad_id)}
    out["input_ids"][lay["where"]] = batch["input_ids"][mask]
    if "mm_token_type_ids" in batch:
        out["mm_token_type_ids"] = batch["mm_token_type_ids"].new_zeros((lay["rows"], lay["cols"]))
        out["mm_token_type_ids"][lay["where"]] = batch["mm_token_type_ids"][mask]
    positions, out["item_ids"] = positions_and_items(lay)
    out["position_ids"] = positions if position_rows == 1 else positions.expand(position_rows, *positions.shape).clone()
    out["last_index"] = lay["last_index"]
    return out, lay["spans"], restore


def chunk_rows(spans: list[tuple[int, int]], width: int, budget: int) -> list[dict]:
    """GradCache chunks of a packed pass: consecutive rows, as many as fit ``budget`` tokens (at least one).
    Each is ``{"rows": (first item, end item), "packed": (first row, end row), "first_col": 0, "media": {}}``
    (``rows`` is what ``cached_embed`` slices the embedding gradient by)."""
    per_chunk = max(1, budget // width)
    return [{"rows": (spans[r][0], spans[min(r + per_chunk, len(spans)) - 1][1]),
             "packed": (r, min(r + per_chunk, len(spans))), "first_col": 0, "media": {}}
            for r in range(0, len(spans), per_chunk)]


def take_rows(batch: dict, chunk: dict, keys=("input_ids", "position_ids", "mm_token_type_ids")) -> dict:
    """A packed chunk's rows of ``keys`` (packed [..., R, W] tensors), its items' pooling indices shifted to the
    chunk; no host sync."""
    (first, end), (r0, r1) = chunk["rows"], chunk["packed"]
    width = batch["item_ids"].shape[1]
    out = {key: batch[key][..., r0:r1, :] for key in keys if key in batch}
    out["item_ids"] = (batch["item_ids"][r0:r1] - first).clamp_min(-1)
    out["last_index"] = batch["last_index"][first:end] - r0 * width
    return out
