"""Generative-stage documents about scenes, for ``lco.pretrain``.

Kinds (drawn with ``weights``):
- ``caption``: the chat prompt ``[image] Describe the image.`` answered by a caption of the scene;
- ``text``: a caption as plain text (language modelling on the caption language);
- ``summary_image`` / ``summary_text``: the *embedding* prompt of lco (an image, or a caption, then
  "Summarize the above ... in one word:") answered by one attribute word of the scene, so both modalities
  learn to predict the same words at the position whose state becomes the embedding.

``DocumentCollator`` returns ``inputs`` (processor tensors, right-padded), ``labels`` [N, T] (-100 except on
target tokens) and ``kind`` per row. ``toy_vocabulary`` lists every token id a target can contain.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset

from lco.data.media import load_image
from lco.data.synthetic import ATTRIBUTES, TEMPLATES, caption, random_scene, scene_image_path
from lco.errors import ConfigError
from lco.prompts import Prompter

KINDS = ("caption", "text", "summary_image", "summary_text")
END = "<|im_end|>"


def make_document(kind: str, scene: dict, rng: random.Random) -> dict:
    """One document: ``{"kind", "scene", "item" (the prompt's content), "target" (text to predict)}``."""
    text = caption(scene, rng.choice(TEMPLATES))
    if kind == "caption":
        return {"kind": kind, "scene": scene, "item": {"image": scene_image_path(scene)}, "target": text + END}
    if kind == "text":
        return {"kind": kind, "scene": scene, "item": None, "target": text}
    word = scene[rng.choice(sorted(ATTRIBUTES))]
    item = {"image": scene_image_path(scene)} if kind == "summary_image" else {"text": text}
    return {"kind": kind, "scene": scene, "item": item, "target": word + END}


class SceneDocuments(IterableDataset):
    """Endless (or ``n``-long) stream of documents from scenes of ``split``, seeded."""

    def __init__(self, weights: dict[str, float], split: str = "train", seed: int = 0, n: int | None = None):
        unknown = set(weights) - set(KINDS)
        if unknown:
            raise ConfigError(f"document kinds {sorted(unknown)} unknown; use {KINDS}")
        self.kinds, self.weights = list(weights), [float(w) for w in weights.values()]
        self.split, self.seed, self.n = split, seed, n

    def __iter__(self):
        rng = random.Random(f"{self.seed}-{self.split}-documents")
        for _ in itertools.count() if self.n is None else range(self.n):
            yield make_document(rng.choices(self.kinds, self.weights)[0], random_scene(rng, self.split), rng)


def toy_vocabulary(tokenizer) -> list[int]:
    """Sorted ids of every token any document target can contain (captions of all scenes, words, end)."""
    ids = set(tokenizer(END, add_special_tokens=False)["input_ids"])
    for values in itertools.product(*ATTRIBUTES.values()):
        scene = dict(zip(ATTRIBUTES, values))
        for template in TEMPLATES:
            ids.update(tokenizer(caption(scene, template), add_special_tokens=False)["input_ids"])
    for word in itertools.chain(*ATTRIBUTES.values()):
        ids.update(tokenizer(word + END, add_special_tokens=False)["input_ids"])
    return sorted(ids)


@dataclass
class DocumentCollator:
    processor: object
    prompter: Prompter

    def _prompt(self, doc: dict) -> str:
        if doc["kind"] == "text":
            return ""
        if doc["kind"] == "caption":
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
            return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.prompter.render(self.processor, doc["item"])

    def __call__(self, docs: list[dict]) -> dict:
        texts = [self._prompt(d) + d["target"] for d in docs]
        images = [load_image(d["item"]["image"]) for d in docs if d["item"] and d["item"].get("image")]
        enc = self.processor(text=texts, images=images or None, padding=True, padding_side="right",
                             add_special_tokens=False, return_tensors="pt")
        inputs = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
        labels = torch.full_like(inputs["input_ids"], -100)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        lengths = inputs["attention_mask"].sum(1)
        for row, doc in enumerate(docs):  # the target is the last tokens of the (right-padded) sequence
            n = len(tokenizer(doc["target"], add_special_tokens=False)["input_ids"])
            end = int(lengths[row])
            labels[row, end - n:end] = inputs["input_ids"][row, end - n:end]
        return {"inputs": inputs, "labels": labels, "kind": [d["kind"] for d in docs],
                "scene": [d["scene"] for d in docs]}
