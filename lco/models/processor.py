"""Load the processor that turns chat prompts (and media) into model inputs.

Real checkpoints load through ``AutoProcessor`` exactly as users expect. transformers 5 refuses to build the
Qwen VL/Omni processors when torchvision is absent (their video processor needs it); lco then assembles the
*same* processor class from the checkpoint's own tokenizer, PIL image processor and audio feature extractor,
with ``FramesVideoProcessor`` (numpy/PIL) in the video slot, without trying ``AutoProcessor`` first (it would
parse the tokenizer's ~11 MB ``tokenizer.json``, ~1 s, before refusing). Text and image processing are identical.
"""

from __future__ import annotations

import importlib.util

from transformers import AutoProcessor, AutoTokenizer, processing_utils
from transformers.video_processing_utils import VideoProcessorMixin


QWEN2_VIDEO, QWEN3_VIDEO = "Qwen2VLVideoProcessor", "Qwen3VLVideoProcessor"


class FramesVideoProcessor(VideoProcessorMixin):
    """Qwen2-VL / Qwen3-VL video preprocessing on frame lists with PIL + numpy (no torchvision).

    Input: a list of videos, each a list of RGB frames (PIL images or HxWx3 uint8 arrays, an even count).
    Output: ``pixel_values_videos`` [sum(t*h*w), 3*2*p*p] float32 and ``video_grid_thw`` [n_videos, 3], with
    frames resized to one size whose sides are multiples of ``patch_size * merge_size``, normalised with
    ``image_mean``/``image_std`` (CLIP's by default) and grouped in temporal pairs, as the torchvision processor
    named by ``kind`` lays them out. ``kind``: ``Qwen2VLVideoProcessor`` fits each frame in the
    ``min_pixels``/``max_pixels`` budget (Qwen2-VL, Qwen2.5-VL/Omni, Qwen3-Omni: its checkpoint names this class
    with 16-pixel patches); ``Qwen3VLVideoProcessor`` fits frames x pixels of the clip in it, capped per frame
    when ``cap_pixels_per_frame`` (Qwen3-VL, Qwen3.5). Frames are never re-sampled: lco samples them
    (``lco.data.media.load_video``) and passes their source indices and fps as ``video_metadata``.
    """

    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, min_pixels: int = 128 * 28 * 28, max_pixels: int = 768 * 28 * 28, patch_size: int = 14,
                 temporal_patch_size: int = 2, merge_size: int = 2, image_mean: list[float] | None = None,
                 image_std: list[float] | None = None, kind: str = QWEN2_VIDEO, cap_pixels_per_frame: bool = False,
                 max_video_tokens: int = 768, **kwargs):
        from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        super().__init__(**kwargs)
        if kind not in (QWEN2_VIDEO, QWEN3_VIDEO):
            raise ValueError(f"FramesVideoProcessor mirrors {QWEN2_VIDEO} or {QWEN3_VIDEO}, not {kind!r}")
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.patch_size, self.temporal_patch_size, self.merge_size = patch_size, temporal_patch_size, merge_size
        self.image_mean, self.image_std = list(image_mean or OPENAI_CLIP_MEAN), list(image_std or OPENAI_CLIP_STD)
        self.kind, self.cap_pixels_per_frame, self.max_video_tokens = kind, cap_pixels_per_frame, max_video_tokens

    def __call__(self, videos, **kwargs):
        return self.preprocess(videos, **kwargs)

    def to_dict(self) -> dict:
        """Saved as the torchvision video processor config it mirrors, so saved folders load anywhere."""
        config = {"video_processor_type": self.kind, "patch_size": self.patch_size,
                  "temporal_patch_size": self.temporal_patch_size, "merge_size": self.merge_size,
                  "image_mean": self.image_mean, "image_std": self.image_std,
                  "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}}
        if self.kind == QWEN3_VIDEO:
            config.update(cap_pixels_per_frame=self.cap_pixels_per_frame, max_video_tokens=self.max_video_tokens)
        return config

    def _size(self, frames: int, height: int, width: int, low: int, high: int) -> tuple[int, int]:
        """The resized (height, width) of a clip of ``frames`` frames, as the mirrored processor picks it."""
        factor = self.patch_size * self.merge_size
        if self.kind == QWEN2_VIDEO:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

            return smart_resize(height, width, factor=factor, min_pixels=low, max_pixels=high)
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

        if self.cap_pixels_per_frame:  # Qwen3VLVideoProcessor.resize's per-frame cap
            high = max(min(self.max_video_tokens * factor * factor, high // frames), int(low * 1.05)) * frames
        return smart_resize(frames, height, width, temporal_factor=self.temporal_patch_size, factor=factor,
                            min_pixels=low, max_pixels=high)

    def preprocess(self, videos, return_tensors=None, size: dict | None = None, min_pixels: int | None = None,
                   max_pixels: int | None = None, return_metadata: bool = False, video_metadata=None, **kwargs):
        """``size`` (``shortest_edge``/``longest_edge``) or ``min_pixels``/``max_pixels`` override the saved
        budget, as the real processor's do: the Omni processors pass their own. ``return_metadata``: also
        ``video_metadata``, the one given (``VideoMetadata`` or dict per video) or, without it, the frame count
        only (so ``sampled_fps`` is transformers' default for frame lists), which the Qwen2.5-VL and Qwen3-VL
        processors read."""
        import numpy as np
        from PIL import Image
        from transformers import BatchFeature
        from transformers.video_utils import VideoMetadata

        size = size or {}
        low = min_pixels or size.get("shortest_edge") or self.min_pixels
        high = max_pixels or size.get("longest_edge") or self.max_pixels
        mean = np.array(self.image_mean, dtype=np.float32)[:, None, None]
        std = np.array(self.image_std, dtype=np.float32)[:, None, None]
        patches, grids = [], []
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        for frames in videos:
            frames = [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f)) for f in frames]
            height, width = self._size(len(frames), frames[0].height, frames[0].width, low, high)
            frames = frames + frames[-1:] * (-len(frames) % tp)
            video = np.stack([
                (np.asarray(f.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
                 .transpose(2, 0, 1) / 255.0 - mean) / std for f in frames])  # [T, C, H, W]
            t, c, gh, gw = len(frames) // tp, 3, height // p, width // p
            video = video.reshape(t, tp, c, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
            patches.append(video.reshape(t * gh * gw, c * tp * p * p))
            grids.append([t, gh, gw])
        data = {"pixel_values_videos": np.concatenate(patches), "video_grid_thw": np.array(grids, dtype=np.int64)}
        out = BatchFeature(data=data, tensor_type=return_tensors)
        if return_metadata:
            given = video_metadata or [{"total_num_frames": len(frames)} for frames in videos]
            out["video_metadata"] = [m if isinstance(m, VideoMetadata) else VideoMetadata(**m) for m in given]
        return out


def _allow_video_mixin() -> None:
    # transformers 5.x checks processor slots against top-level names; without torchvision
    # `VideoProcessorMixin` is not exported and the check crashes on a missing attribute.
    if not hasattr(processing_utils.transformers_module, "VideoProcessorMixin"):
        setattr(processing_utils.transformers_module, "VideoProcessorMixin", VideoProcessorMixin)


def assemble_processor(processor_class: str, tokenizer, image_processor=None, feature_extractor=None,
                       chat_template: str | None = None, video_processor=None):
    """Build a Qwen VL/Omni processor from parts. ``processor_class`` names a transformers class."""
    import transformers

    if processor_class == "tokenizer":
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        return tokenizer
    _allow_video_mixin()
    cls = getattr(transformers, processor_class)
    parts = {"image_processor": image_processor, "tokenizer": tokenizer,
             "video_processor": video_processor or FramesVideoProcessor()}
    if feature_extractor is not None:
        parts["feature_extractor"] = feature_extractor
    return cls(**parts, chat_template=chat_template or tokenizer.chat_template)


def load_processor(path: str, processor_class: str, feature_extractor_class: str | None, **hub_kwargs):
    """Load the processor (or tokenizer, for text-only families) saved at ``path`` (folder or hub id)."""
    if processor_class == "tokenizer":
        return AutoTokenizer.from_pretrained(path, padding_side="left", **hub_kwargs)
    if importlib.util.find_spec("torchvision") is None:  # AutoProcessor would parse the ~11 MB tokenizer.json
        return assemble_from(path, processor_class, feature_extractor_class, **hub_kwargs)  # and then refuse
    try:
        return AutoProcessor.from_pretrained(path, **hub_kwargs)
    except (ImportError, ValueError) as err:
        if "torchvision" not in str(err).lower():
            raise
    return assemble_from(path, processor_class, feature_extractor_class, **hub_kwargs)


def assemble_from(path: str, processor_class: str, feature_extractor_class: str | None, **hub_kwargs):
    """lco's assembly of the processor saved at ``path`` (the path taken without torchvision): the folder's
    tokenizer, its PIL image processor and audio feature extractor, and ``FramesVideoProcessor``.
    ``tests/test_vision.py`` compares it with ``AutoProcessor``'s torchvision build."""
    import transformers

    tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs)
    image_processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(path, **hub_kwargs)
    feature_extractor = None
    if feature_extractor_class:
        feature_extractor = getattr(transformers, feature_extractor_class).from_pretrained(path, **hub_kwargs)
    return assemble_processor(processor_class, tokenizer, image_processor, feature_extractor,
                              video_processor=FramesVideoProcessor(**_video_config(path, **hub_kwargs)))


def _video_config(path: str, **hub_kwargs) -> dict:
    """``FramesVideoProcessor`` settings from the checkpoint's video processor config, if it has one: the pixel
    budget, patch sizes, normalisation and which torchvision processor it names."""
    import json

    from transformers.utils import cached_file

    for name in ("video_preprocessor_config.json", "processor_config.json", "preprocessor_config.json"):
        found = cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if not found:
            continue
        config = json.loads(open(found).read())
        config = config.get("video_processor", config)
        size = config.get("size") or {}
        settings = {"min_pixels": size.get("shortest_edge", config.get("min_pixels")),
                    "max_pixels": size.get("longest_edge", config.get("max_pixels")),
                    "kind": config.get("video_processor_type")
                    if config.get("video_processor_type") in (QWEN2_VIDEO, QWEN3_VIDEO) else None,
                    **{k: config.get(k) for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean",
                                                  "image_std", "cap_pixels_per_frame", "max_video_tokens")}}
        return {k: v for k, v in settings.items() if v is not None}
    return {}
