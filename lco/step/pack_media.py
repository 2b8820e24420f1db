"""Padding-free packing of a forward pass with images, audio or video (Qwen VL/Omni families).

Text passes are packed on the host (``pack.py``). Media items' rotary positions cannot be: the model lays out the
temporal/height/width positions of their image, video and audio tokens per batch (``get_rope_index``), and the
vision/audio towers fill the placeholders with the batch's media in order. So the work is split:

- ``pack_media(batch, width)`` (host, CPU tensors): keeps the padded batch as it is and adds the layout of its
  items packed in order into rows of about ``width`` tokens (``pack.in_order_rows``): ``pack_index`` [R, W]
  (each slot's flat index into the padded [N, T] tokens, -1 for padding), ``text_positions`` [R, W] (0, 1, ...
  per item), ``item_ids`` [R, W] and ``last_index`` [N] (pooling, as for text). Under GradCache a chunk is a
  run of packed rows with its items' padded rows and media slices (``plan.take_media_rows``).
- ``media_inputs(headless, inputs, pad_id)`` (device, at embed time): the model's own multimodal rotary positions
  of the padded batch (its ``compute_3d_position_ids``), gathered into the packed layout behind the text positions
  ([4, R, W], the layout transformers reads packed sequences from), the packed ``input_ids`` and
  ``mm_token_type_ids``, and the media tensors unchanged. Items keep their order, so each placeholder still gets
  its own image, clip or video.

Every item then sees the tokens and the rotary positions it has in the padded batch: its embedding and gradients
are the same (``tests/test_packing.py``).
"""

from __future__ import annotations

import inspect

import torch

from lco.errors import BatchLayoutError
from lco.step.pack import in_order_rows, layout, positions_and_items, real_lengths

LAYOUT_KEYS = ("pack_index", "text_positions", "item_ids", "last_index")
ROW_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def pack_media(batch: dict, width: int) -> tuple[dict, list[tuple[int, int]]]:
    """The padded media ``batch`` plus its packed layout (see the module docstring), and the rows' item ranges."""
    mask, lengths = batch["attention_mask"].bool(), real_lengths(batch)
    lay = layout(lengths, in_order_rows(lengths.tolist(), width))
    pack_index = torch.full((lay["rows"], lay["cols"]), -1, dtype=torch.long)
    pack_index[lay["where"]] = mask.flatten().nonzero().squeeze(1)  # real tokens in item order
    text_positions, item_ids = positions_and_items(lay)
    return {**batch, "pack_index": pack_index, "text_positions": text_positions, "item_ids": item_ids,
            "last_index": lay["last_index"]}, lay["spans"]


def rope_positions(headless, batch: dict) -> torch.Tensor:
    """The model's multimodal rotary positions [3, N, T] of a padded batch: its own ``compute_3d_position_ids``,
    given what its signature asks for (families name the video timing and audio lengths differently)."""
    compute = getattr(headless, "compute_3d_position_ids", None)
    if compute is None:
        raise BatchLayoutError(f"{type(headless).__name__} has no compute_3d_position_ids: its media passes cannot "
                               "be packed. Set step.pack=false.")
    given = dict(batch)
    if "feature_attention_mask" in batch:
        given["audio_feature_lengths"] = batch["feature_attention_mask"].sum(dim=1)
    args = {}
    for name, param in inspect.signature(compute).parameters.items():
        if name in given:
            args[name] = given[name]
        elif param.default is inspect.Parameter.empty and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            args[name] = None  # a required input this batch has none of (no video, no cache, no inputs_embeds)
    positions = compute(**args)
    if positions is None or positions.dim() != 3 or positions.shape[0] != 3:
        raise BatchLayoutError(f"{type(headless).__name__}.compute_3d_position_ids gave no [3, N, T] positions for "
                               "a media pass; set step.pack=false.")
    return positions


def media_inputs(headless, inputs: dict, pad_id: int) -> dict:
    """The model inputs of a packed media pass (see the module docstring); the Embedder pools with ``item_ids``
    and ``last_index``."""
    padded = {k: v for k, v in inputs.items() if k not in LAYOUT_KEYS}
    index = inputs["pack_index"]
    real, flat = index >= 0, index.clamp_min(0)
    rope = rope_positions(headless, padded).flatten(1)[:, flat]  # [3, R, W]
    text = inputs["text_positions"]
    out = {"input_ids": padded["input_ids"].flatten()[flat].masked_fill(~real, pad_id),
           "position_ids": torch.cat([text[None], torch.where(real, rope, text)])}
    if "mm_token_type_ids" in padded:
        out["mm_token_type_ids"] = padded["mm_token_type_ids"].flatten()[flat].masked_fill(~real, 0)
    return {**out, **{k: v for k, v in padded.items() if k not in ROW_KEYS}}
