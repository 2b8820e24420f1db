"""Items -> chat prompts -> processor tensors: lco's one preprocessing, for training and inference alike.

``Preprocessor(items)`` turns a list of items (``{"text", "image", "audio", "video"}`` dicts) into one
left-padded processor batch: ``input_ids`` [N, T] (long), ``attention_mask`` [N, T], plus ``pixel_values``/
``image_grid_thw`` (images), ``pixel_values_videos``/``video_grid_thw`` (videos), ``input_features``/
``feature_attention_mask`` (audio) where items carry media. Each item's text is cut to ``max_text_tokens``
tokens and wrapped in the chat prompt of ``lco/prompts.py``; media are loaded here (``lco/data/media.py``):
images fitted in ``image_max_size``, audio resampled to the feature extractor's rate and cut to
``audio_max_seconds``, videos sampled to ``video_max_frames`` frames. Processors that write each frame pair's
time into the prompt (Qwen3-VL's, also Qwen3.5's) get the frames' source indices and fps as ``video_metadata`` (frame
folders are taken at ``video_folder_fps``) and do not re-sample them. Runs inside DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lco.data.media import load_audio, load_image, load_video
from lco.errors import ConfigError, RecordError
from lco.prompts import Prompter, SourcePrompt


@dataclass
class Preprocessor:
    """Items -> one left-padded processor batch (see the module docstring); built once by ``lco.train`` from the
    ``preprocess`` config and the backbone's processor, and used by the datamodule's collator and the
    ``Embedder`` alike. ``card()`` is its part of ``lco_embedding.json``; ``from_card`` rebuilds it."""

    processor: object
    prompter: Prompter
    max_text_tokens: int = 650
    image_max_size: int = 700
    audio_max_seconds: float = 30.0
    video_max_frames: int = 16
    video_folder_fps: float = 2.0
    # source name -> its prompt over ``prompter`` (lco/prompts.py); an item with ``"prompt": <name>`` uses it
    source_prompts: dict = field(default_factory=dict)

    def __post_init__(self):
        self.source_prompts = {str(name): spec if isinstance(spec, SourcePrompt) else SourcePrompt.parse(name, spec)
                               for name, spec in dict(self.source_prompts or {}).items()}
        self._prompters = {name: spec.over(self.prompter) for name, spec in self.source_prompts.items()}

    def applies(self, source: str | None, side: str) -> bool:
        """Whether ``source``'s own prompt is used on the record ``side`` (``anchor``, ``positive``, ``negatives``)."""
        return source in self.source_prompts and side in self.source_prompts[source].sides

    def prompter_for(self, item: dict) -> Prompter:
        """The prompter of ``item``: its ``prompt`` source's, or the default one."""
        name = item.get("prompt")
        if name is None:
            return self.prompter
        if name not in self._prompters:
            known = ", ".join(sorted(self._prompters)) or "none"
            raise ConfigError(f"prompt {name!r} is not one of this model's source prompts ({known}); they are set by "
                              "preprocess.source_prompts.<source> and recorded in lco_embedding.json.")
        return self._prompters[name]

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def card(self) -> dict:
        """The settings a user needs to preprocess items as training did (keys of ``lco_embedding.json``)."""
        return {"max_text_tokens": self.max_text_tokens, "image_max_size": self.image_max_size,
                "audio_max_seconds": self.audio_max_seconds, "video_max_frames": self.video_max_frames,
                "video_folder_fps": self.video_folder_fps, "prompt_suffixes": self.prompter.suffixes,
                "system_prompt": self.prompter.system, "instruction": self.prompter.instruction,
                "padding_side": "left",
                "source_prompts": {name: spec.card() for name, spec in self.source_prompts.items()}}

    @classmethod
    def from_card(cls, processor, card: dict) -> Preprocessor:
        """The preprocessor a card describes (cards written before a setting existed get its default)."""
        prompter = Prompter(suffixes=card["prompt_suffixes"], system=card.get("system_prompt"),
                            instruction=card.get("instruction"))
        return cls(processor, prompter, card["max_text_tokens"],
                   **{k: card[k] for k in ("image_max_size", "audio_max_seconds", "video_max_frames",
                                           "video_folder_fps", "source_prompts") if k in card})

    def truncate(self, texts: list[str]) -> list[str]:
        """Cut each item's own text to ``max_text_tokens`` tokens (the prompt around it is kept whole). One
        batched tokenizer call for the texts that could be too long; only those that are get decoded back."""
        # a byte-level BPE token covers at least one UTF-8 byte: texts of <= max_text_tokens bytes need no check
        long = [i for i, text in enumerate(texts) if len(text.encode()) > self.max_text_tokens]
        if not long:
            return list(texts)
        ids = self.tokenizer([texts[i] for i in long], add_special_tokens=False)["input_ids"]
        out = list(texts)
        for i, row in zip(long, ids):
            if len(row) > self.max_text_tokens:
                out[i] = self.tokenizer.decode(row[: self.max_text_tokens])
        return out

    def _media(self, items: list[dict]) -> dict:
        media: dict[str, list] = {"images": [], "videos": [], "audio": []}
        clips = []
        for item in items:  # placeholder order = item order, image/video/audio within an item
            if item.get("image") is not None:
                media["images"].append(load_image(item["image"], self.image_max_size))
            if item.get("video") is not None:
                clips.append(load_video(item["video"], self.video_max_frames, self.image_max_size))
                media["videos"].append(clips[-1].frames)
            if item.get("audio") is not None:
                rate = self.processor.feature_extractor.sampling_rate
                media["audio"].append(load_audio(item["audio"], rate, self.audio_max_seconds))
        media = {k: v for k, v in media.items() if v}
        if clips and _timestamps(self.processor):  # the frames lco sampled, at their source times
            media.update(video_metadata=[c.metadata(self.video_folder_fps) for c in clips], do_sample_frames=False)
        return media

    def prompts(self, items: list[dict]) -> list[str]:
        """The chat prompt string of each item, its text cut to ``max_text_tokens`` (what the model reads)."""
        with_text = [i for i, item in enumerate(items) if item.get("text")]
        cut = dict(zip(with_text, self.truncate([items[i]["text"] for i in with_text])))
        return [self.prompter_for(item).render(self.processor, {**item, "text": cut[i]} if i in cut else item)
                for i, item in enumerate(items)]

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        prompts = self.prompts(items)
        kwargs = dict(padding=True, padding_side="left", return_tensors="pt")
        if self.processor is self.tokenizer:
            if any(item.get(m) is not None for item in items for m in ("image", "video", "audio")):
                raise RecordError("a text-only model was given image/audio/video items; use a multimodal model.")
            return dict(self.tokenizer(prompts, add_special_tokens=False, **kwargs))
        encoded = self.processor(text=prompts, add_special_tokens=False, **self._media(items), **kwargs)
        return {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}


def _timestamps(processor) -> bool:
    """Whether ``processor`` writes each frame pair's time (``<1.5 seconds>``) into the prompt: Qwen3-VL's, used
    by Qwen3.5 too (Qwen3-Omni's is another class and times video tokens by its default fps, as Qwen2.5's do)."""
    import transformers

    return isinstance(processor, transformers.Qwen3VLProcessor)
