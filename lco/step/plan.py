"""Plans of a training step, made on the host: fuse sides into one forward pass, cut a batch into chunks.

A processor batch (see ``lco.preprocess.Preprocessor``) is a dict of tensors: per-row tensors [N, T] (``input_ids``,
``attention_mask``, ``mm_token_type_ids``), left-padded, and per-media tensors whose rows belong to the items in
order (``pixel_values`` [sum of t*h*w patches, C] with ``image_grid_thw`` [n_images, 3]; the ``*_videos``
twins; ``input_features`` / ``feature_attention_mask`` [n_audio, ...]).

``fuse(sides)`` concatenates text-only sides (anchor, positive, negatives) into one batch when padding them to a
common length costs little, so one forward pass replaces three. ``plan_chunks(batch, size)`` cuts a batch into
row chunks of ``size`` items for GradCache, each with its leading all-padding columns dropped and its own
slices of the media tensors (``sort_by_length`` first groups a text-only batch's rows by length, so chunks
carry little padding, and ``fill`` lets chunks of short rows take more of them: ``row_ranges``);
``take(batch, chunk)`` applies one on any device with Python ints only, so the training step never waits on
the host. Both only re-arrange: every item's tokens, mask and media stay the same, and with rotary positions
(relative) an item's embedding does not depend on how much padding precedes it.
"""

from __future__ import annotations

import torch

from lco.errors import BatchLayoutError
from lco.step.pack import take_rows

# per-row tensors [..., N, T] (position_ids: 1 row, or 4 for multimodal rotary)
ROW_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "position_ids")
# media kind -> (its grid key, {key: rows per item of that kind}) where "grid" means prod(grid_thw) patch rows
# per item and "one" one row per item.
MEDIA = {
    "image": ("image_grid_thw", {"pixel_values": "grid", "image_grid_thw": "one"}),
    "video": ("video_grid_thw", {"pixel_values_videos": "grid", "video_grid_thw": "one",
                                 "video_second_per_grid": "one",  # Omni
                                 "second_per_grid_ts": "one"}),  # Qwen2.5-VL
    "audio": (None, {"input_features": "one", "feature_attention_mask": "one"}),
}
TEXT_ONLY = frozenset(ROW_KEYS)


def _left_pad(batch: dict, width: int, pad_id: int) -> dict:
    extra = width - batch["input_ids"].shape[1]
    if extra == 0:
        return batch
    out = {}
    for key, value in batch.items():
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.cat([value.new_full((value.shape[0], extra), fill), value], dim=1)
    return out


def join(batches: list[dict], pad_id: int) -> dict:
    """Text-only batches -> one left-padded batch; rows in the order given."""
    if len(batches) == 1:
        return batches[0]
    width = max(b["input_ids"].shape[1] for b in batches)
    padded = [_left_pad(b, width, pad_id) for b in batches]
    return {key: torch.cat([b[key] for b in padded]) for key in batches[0]}


def fuse(sides: list[dict], pad_id: int, max_padding: float | None) -> list[tuple[dict, list[int]]]:
    """Group ``sides`` into forward passes: ``[(batch, [side index, ...]), ...]`` covering every side once.

    Text-only sides with the same keys are joined, shortest first, while the joined batch's token count stays
    within ``max_padding`` x the sides' own padded token counts; ``max_padding=None`` never joins. Sides with
    media are never joined (their processors lay out media per batch).
    """
    text = sorted((i for i, s in enumerate(sides) if set(s) <= TEXT_ONLY),
                  key=lambda i: sides[i]["input_ids"].shape[1])
    if max_padding is None:
        text = []
    groups = [(sides[i], [i]) for i in range(len(sides)) if i not in text]
    current: list[int] = []
    for i in text:  # shortest first: side i is the widest of any group it joins
        trial = current + [i]
        own = sum(sides[j]["input_ids"].numel() for j in trial)
        joined = sum(sides[j]["input_ids"].shape[0] for j in trial) * sides[i]["input_ids"].shape[1]
        if current and (joined > max_padding * own or set(sides[i]) != set(sides[current[0]])):
            groups.append((join([sides[j] for j in current], pad_id), current))
            trial = [i]
        current = trial
    if current:
        groups.append((join([sides[j] for j in current], pad_id), current))
    return sorted(groups, key=lambda g: g[1][0])


def sort_by_length(batch: dict) -> tuple[dict, torch.Tensor]:
    """A text-only batch with rows reordered longest first, and ``restore`` [N] (long) such that
    ``embeddings_of_sorted[restore]`` is in the original row order. Chunks of the sorted batch carry little
    padding (``plan_chunks`` drops each chunk's all-padding columns)."""
    order = torch.argsort(batch["attention_mask"].sum(dim=1), descending=True, stable=True)
    return {key: value[..., order, :] for key, value in batch.items()}, torch.argsort(order)


def _media_counts(batch: dict, token_ids: dict[str, int | None]) -> dict[str, list[int]]:
    """Per media kind, how many items of that kind each row holds (runs of its placeholder token)."""
    counts = {}
    for kind, (_, keys) in MEDIA.items():
        if not any(k in batch for k in keys):
            continue
        token = token_ids.get(kind)
        if token is None:
            raise BatchLayoutError(f"the batch has {kind} tensors but the model config names no {kind} token id")
        hits = batch["input_ids"] == token
        starts = hits[:, :1] | (hits[:, 1:] & ~hits[:, :-1])
        counts[kind] = starts.sum(dim=1).tolist()
    return counts


def row_ranges(lengths: list[int], size: int | None, fill: bool = False,
               budget: int | None = None) -> list[tuple[int, int]]:
    """Row ranges ``[(start, end), ...]`` covering ``len(lengths)`` rows in order: ``size`` rows each; with
    ``fill``, as many rows as fit the padded-token footprint (rows x longest ``lengths`` in the range) of the
    largest ``size``-row range, so no range costs more activation memory than a ``size``-row one would, and
    short rows share fewer, fuller forward passes (on a batch sorted longest first: ``size`` rows of the
    longest, then more and more of the shorter); with ``budget``, as many rows as fit that footprint (tokens)."""
    n = len(lengths)
    if budget is None:
        fixed = [(start, min(start + size, n)) for start in range(0, n, size)]
        if not fill:
            return fixed
        budget = max((end - start) * max(lengths[start:end]) for start, end in fixed)
    ranges, start = [], 0
    while start < n:
        end, width = start + 1, lengths[start]
        while end < n and (end + 1 - start) * max(width, lengths[end]) <= budget:
            width = max(width, lengths[end])
            end += 1
        ranges.append((start, end))
        start = end
    return ranges


def plan_chunks(batch: dict, size: int | None, token_ids: dict[str, int | None] | None = None,
                fill: bool = False, budget: int | None = None,
                ranges: list[tuple[int, int]] | None = None) -> list[dict]:
    """Chunks of ``size`` rows (``fill``: filled up to the same padded-token footprint; ``budget``: rows up to
    that many padded tokens; see ``row_ranges``; or the given row ``ranges``): ``{"rows": (start, end),
    "first_col": c, "media": {key: (start, end)}}``.

    Computed on the host (CPU tensors) before the batch moves to the device. ``token_ids`` maps ``image``,
    ``video``, ``audio`` to the model's placeholder token ids; needed only when the batch has media (whose
    chunks are never filled by ``size``: their memory is not counted in tokens; a ``budget`` counts their
    placeholder tokens).
    """
    unknown = set(batch) - TEXT_ONLY - {k for _, keys in MEDIA.values() for k in keys}
    if unknown:
        raise BatchLayoutError(f"step.cache_chunk cannot split batch tensors {sorted(unknown)}: lco does not "
                               "know which items they belong to. Set step.cache_chunk=null for this model/data.")
    real = batch["attention_mask"].bool()
    counts = _media_counts(batch, token_ids or {})
    cursor = {key: 0 for _, keys in MEDIA.values() for key in keys if key in batch}
    chunks = []
    for start, end in ranges or row_ranges(real.sum(dim=1).tolist(), size, fill=fill and not counts, budget=budget):
        used = real[start:end].any(dim=0).nonzero()
        first_col = int(used[0]) if len(used) else 0
        media = {}
        for kind, (grid_key, keys) in MEDIA.items():
            if kind not in counts:
                continue
            items = sum(counts[kind][start:end])
            for key, unit in keys.items():
                if key not in batch:
                    continue
                rows = items
                if unit == "grid":  # patch rows: this chunk's items' t*h*w (grid cursor not yet advanced)
                    done = cursor[grid_key]
                    rows = int(batch[grid_key][done: done + items].prod(dim=1).sum())
                media[key] = (cursor[key], cursor[key] + rows)
            for key in keys:
                if key in batch:
                    cursor[key] = media[key][1]
        chunks.append({"rows": (start, end), "first_col": first_col, "media": media})
    for kind, (_, keys) in MEDIA.items():
        for key in keys:
            if key in cursor and cursor[key] != batch[key].shape[0]:
                raise BatchLayoutError(f"{key} has {batch[key].shape[0]} rows but the {kind} placeholders in "
                                       f"input_ids account for {cursor[key]}; the batch cannot be chunked.")
    return chunks


def take(batch: dict, chunk: dict) -> dict:
    """The chunk's rows (leading padding dropped) and media slices; device-agnostic, no host sync. Media kinds
    with no item in the chunk are left out, as the processor leaves them out of a batch without them. A packed
    chunk (``pack.chunk_rows``) is a range of packed rows (``pack.take_rows``; a media pass: ``take_media_rows``).
    A text pass's shared ``prefix_ids`` (``prefix.py``) goes with every chunk."""
    if "pack_index" in batch:
        return take_media_rows(batch, chunk)
    if "packed" in chunk:
        out = take_rows(batch, chunk)
    else:
        start, end = chunk["rows"]
        out = {key: batch[key][..., start:end, chunk["first_col"]:] for key in ROW_KEYS if key in batch}
        for key, (a, b) in chunk["media"].items():
            if b > a:
                out[key] = batch[key][a:b]
    if "prefix_ids" in batch:
        out["prefix_ids"] = batch["prefix_ids"]
    return out


def take_media_rows(batch: dict, chunk: dict) -> dict:
    """A chunk of a packed media pass (``pack_media.py``): its items' padded rows and media slices, and the layout
    of its packed rows re-based on them; no host sync."""
    (first, end), (r0, r1) = chunk["rows"], chunk["packed"]
    out = {key: batch[key][first:end] for key in ROW_KEYS if key in batch}
    out.update({key: batch[key][a:b] for key, (a, b) in chunk["media"].items() if b > a})
    out.update(take_rows(batch, chunk, keys=("text_positions",)))
    index = batch["pack_index"][r0:r1]
    out["pack_index"] = torch.where(index >= 0, index - first * batch["input_ids"].shape[1], index)
    return out
