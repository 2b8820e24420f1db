"""Chat prompts: one user turn holding the item's content, then the modality's summary suffix.

The reference recipe (FIELD_NOTES section 2): ``<content>\\nSummarize the above <modality> in one word:``,
``add_generation_prompt=True``; items mixing an image with text use the ``mixed`` suffix.

A data source may add its own prompt on top (``preprocess.source_prompts.<source>``: ``SourcePrompt``): an
instruction before the item's content, a system turn, suffixes per modality, on the sides it names (the anchor by
default, as instructions go to queries only in E5/VLM2Vec-style training).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    instruction: str | None = None  # text before the item's content (media and text), kept whole like the prompt
    _frames: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # id(processor) -> frame

    def __post_init__(self):
        bad = {k: v for k, v in dict(self.suffixes).items() if not isinstance(v, str)}
        if bad:  # str(None) would put the word "None" after every item
            raise ConfigError(f"preprocess.prompter.suffixes {bad} must be text (use \"\" for no suffix).")
        self.suffixes = {str(k): v for k, v in dict(self.suffixes).items()}
        missing = set(REFERENCE_SUFFIXES) - set(self.suffixes)
        if missing:
            raise ConfigError(f"preprocess.prompter.suffixes lacks {sorted(missing)}; give a suffix for every modality.")

    def messages(self, item: dict) -> list[dict]:
        content = [{"type": "text", "text": self.instruction}] if self.instruction else []
        content += [{"type": m} for m in ("image", "video", "audio") if item.get(m)]
        content.append({"type": "text", "text": (item.get("text") or "") + self.suffixes[modality(item)]})
        turns = [{"role": "user", "content": content}]
        if self.system is not None:
            turns.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system}]})
        return turns

    def render(self, processor, item: dict) -> str:
        """The prompt string the model sees (special tokens included, generation prompt appended). A text item
        is put into its frame (``frame``) when the template has one, else rendered by the template."""
        frame = None
        if modality(item) == "text":
            if id(processor) not in self._frames:
                self._frames[id(processor)] = self.frame(processor)
            frame = self._frames[id(processor)]
        if frame is not None:
            return frame[0] + (item.get("text") or "") + frame[1]
        return self._template(processor, item)

    def _template(self, processor, item: dict) -> str:
        return processor.apply_chat_template(self.messages(item), tokenize=False, add_generation_prompt=True)

    def frame(self, processor) -> tuple[str, str] | None:
        """(before, after): a text item's prompt is ``before + text + after``, if the chat template places the
        text verbatim (it is rendered once around a marker, then checked on probes with edge whitespace, braces,
        markup and non-ASCII text); None if it alters the text, and every item is then rendered by the template.
        Rendering the Jinja template per item was ~10% of ``Embedder.encode`` on the tiny twins."""
        marker = "\x00lco-text\x00"
        before, found, after = self._template(processor, {"text": marker}).partition(marker)
        if not found or marker in after:
            return None
        probes = ["", "  leading and trailing  \n", "{{ braces }} {% tags %} <b>markup</b> \\n",
                  "Größe 大小 🙂\t"]
        ok = all(self._template(processor, {"text": p}) == before + p + after for p in probes)
        return (before, after) if ok else None


SIDES = ("anchor", "positive", "negatives")


@dataclass(frozen=True)
class SourcePrompt:
    """One data source's prompt over ``preprocess.prompter``: ``instruction`` (put before the item's content),
    ``system`` (a system turn; None keeps the default's), ``suffixes`` (modality -> suffix, the others kept), on the
    record ``sides`` listed (``anchor``, ``positive``, ``negatives``)."""

    instruction: str | None = None
    system: str | None = None
    suffixes: dict = field(default_factory=dict)
    sides: tuple = ("anchor",)

    @classmethod
    def parse(cls, name: str, spec) -> SourcePrompt:
        """``spec`` (a mapping from the config or a card) checked, every problem in one ``ConfigError``."""
        where = f"preprocess.source_prompts.{name}"
        if not hasattr(spec, "keys"):
            raise ConfigError(f"{where} is {spec!r}; give a mapping with instruction, system, suffixes and/or sides.")
        spec = {str(k): v for k, v in spec.items()}
        problems = [f"{where}.{k} is not a key (use instruction, system, suffixes, sides)"
                    for k in spec if k not in ("instruction", "system", "suffixes", "sides")]
        problems += [f"{where}.{k}={spec[k]!r} must be text or null" for k in ("instruction", "system")
                     if spec.get(k) is not None and not isinstance(spec[k], str)]
        suffixes = spec.get("suffixes") or {}
        if not hasattr(suffixes, "items"):
            problems.append(f"{where}.suffixes must map modalities to text")
            suffixes = {}
        suffixes = {str(k): v for k, v in suffixes.items()}
        problems += [f"{where}.suffixes.{k} is not a modality ({', '.join(REFERENCE_SUFFIXES)})"
                     for k in suffixes if k not in REFERENCE_SUFFIXES]
        problems += [f"{where}.suffixes.{k}={v!r} must be text" for k, v in suffixes.items() if not isinstance(v, str)]
        sides = spec.get("sides", ("anchor",))
        sides = [sides] if isinstance(sides, str) else list(sides or [])
        if not sides or any(side not in SIDES for side in sides):
            problems.append(f"{where}.sides={sides!r} must list some of {', '.join(SIDES)}")
        if problems:
            raise ConfigError("invalid source prompt: " + "; ".join(problems) + ".")
        return cls(spec.get("instruction"), spec.get("system"), suffixes, tuple(sides))

    def over(self, base: Prompter) -> Prompter:
        """The prompter of this source's items: ``base`` with this source's instruction, system and suffixes."""
        return replace(base, suffixes={**base.suffixes, **self.suffixes}, instruction=self.instruction,
                       system=self.system if self.system is not None else base.system)

    def card(self) -> dict:
        return {"instruction": self.instruction, "system": self.system, "suffixes": dict(self.suffixes),
                "sides": list(self.sides)}
