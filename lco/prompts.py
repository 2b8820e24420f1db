"""Chat prompts: one user turn holding the item's content, then the modality's summary suffix.

The reference recipe (FIELD_NOTES section 2): ``<content>\\nSummarize the above <modality> in one word:``,
``add_generation_prompt=True``; items mixing an image with text use the ``mixed`` suffix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lco.errors import ConfigError

REFERENCE_SUFFIXES = {
    "text": "\nSummarize the above text in one word:",
    "image": "\nSummarize the above image in one word:",
    "audio": "\nSummarize the above audio in one word:",
    "video": "\nSummarize the above video in one word:",
    "mixed": "\nSummarize the above in one word:",
}


def modality(item: dict) -> str:
    """The kind of an item: ``text``, ``image``, ``audio``, ``video``, or ``mixed`` (media with text, or two media)."""
    media = [m for m in ("image", "video", "audio") if item.get(m)]
    if len(media) > 1 or (media and item.get("text")):
        return "mixed"
    return media[0] if media else "text"


@dataclass
class Prompter:
    """Turns an item (``{"text": str, "image": ..., ...}``) into chat messages with the right suffix."""

    suffixes: dict[str, str] = field(default_factory=lambda: dict(REFERENCE_SUFFIXES))
    system: str | None = None  # None: the checkpoint's chat template decides (Qwen adds its default system turn)

    def __post_init__(self):
        bad = {k: v for k, v in dict(self.suffixes).items() if not isinstance(v, str)}
        if bad:  # str(None) would put the word "None" after every item
            raise ConfigError(f"preprocess.prompter.suffixes {bad} must be text (use \"\" for no suffix).")
        self.suffixes = {str(k): v for k, v in dict(self.suffixes).items()}
        missing = set(REFERENCE_SUFFIXES) - set(self.suffixes)
        if missing:
            raise ConfigError(f"preprocess.prompter.suffixes lacks {sorted(missing)}; give a suffix for every modality.")

    def messages(self, item: dict) -> list[dict]:
        content = [{"type": m} for m in ("image", "video", "audio") if item.get(m)]
        content.append({"type": "text", "text": (item.get("text") or "") + self.suffixes[modality(item)]})
        turns = [{"role": "user", "content": content}]
        if self.system is not None:
            turns.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system}]})
        return turns

    def render(self, processor, item: dict) -> str:
        """The prompt string the model sees (special tokens included, generation prompt appended)."""
        return processor.apply_chat_template(self.messages(item), tokenize=False, add_generation_prompt=True)
