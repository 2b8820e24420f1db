"""Load the processor that turns chat prompts (and media) into model inputs.

Real checkpoints load through ``AutoProcessor`` exactly as users expect. transformers 5 refuses to build the
Qwen VL/Omni processors when torchvision is absent (their video processor needs it); lco then assembles the
*same* processor class from the checkpoint's own tokenizer, PIL image processor and audio feature extractor,
with a video slot that raises a clear error if videos are used. Text and image processing are identical.
"""

from __future__ import annotations

from transformers import AutoProcessor, AutoTokenizer, processing_utils
from transformers.video_processing_utils import VideoProcessorMixin


class VideoNeedsTorchvision(VideoProcessorMixin):
    """Stands in for the Qwen video processor when torchvision is not installed."""

    def preprocess(self, videos, **kwargs):
        raise ImportError(
            "video inputs need the Qwen video processor, which needs torchvision; install a torch/torchvision "
            "pair that import together (see README, 'Installing') and rerun."
        )


def _allow_video_mixin() -> None:
    # transformers 5.x checks processor slots against top-level names; without torchvision
    # `VideoProcessorMixin` is not exported and the check crashes on a missing attribute.
    if not hasattr(processing_utils.transformers_module, "VideoProcessorMixin"):
        setattr(processing_utils.transformers_module, "VideoProcessorMixin", VideoProcessorMixin)


def assemble_processor(processor_class: str, tokenizer, image_processor=None, feature_extractor=None,
                       chat_template: str | None = None):
    """Build a Qwen VL/Omni processor from parts. ``processor_class`` names a transformers class."""
    import transformers

    if processor_class == "tokenizer":
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        return tokenizer
    _allow_video_mixin()
    cls = getattr(transformers, processor_class)
    parts = {"image_processor": image_processor, "tokenizer": tokenizer, "video_processor": VideoNeedsTorchvision()}
    if feature_extractor is not None:
        parts["feature_extractor"] = feature_extractor
    return cls(**parts, chat_template=chat_template or tokenizer.chat_template)


def load_processor(path: str, processor_class: str, feature_extractor_class: str | None, **hub_kwargs):
    """Load the processor (or tokenizer, for text-only families) saved at ``path`` (folder or hub id)."""
    if processor_class == "tokenizer":
        return AutoTokenizer.from_pretrained(path, padding_side="left", **hub_kwargs)
    try:
        return AutoProcessor.from_pretrained(path, **hub_kwargs)
    except (ImportError, ValueError) as err:
        if "torchvision" not in str(err):
            raise
    import transformers

    tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs)
    image_processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(path, **hub_kwargs)
    feature_extractor = None
    if feature_extractor_class:
        feature_extractor = getattr(transformers, feature_extractor_class).from_pretrained(path, **hub_kwargs)
    return assemble_processor(processor_class, tokenizer, image_processor, feature_extractor)
