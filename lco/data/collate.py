"""Records -> chat prompts -> processor tensors. Runs inside DataLoader workers.

``ItemEncoder`` turns a list of items into one left-padded processor batch (``input_ids`` [N, T],
``attention_mask`` [N, T], plus pixel/audio tensors where items carry media). ``TripletCollator`` applies it
to the anchor, positive and negative columns of a list of triplet records.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lco.prompts import Prompter


@dataclass
class ItemEncoder:
    processor: object
    prompter: Prompter
    max_text_tokens: int = 650

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def truncate(self, text: str) -> str:
        """Cut the item's own text to ``max_text_tokens`` tokens (the prompt around it is kept whole)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_text_tokens:
            return text
        return self.tokenizer.decode(ids[: self.max_text_tokens])

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        items = [{**item, "text": self.truncate(item["text"])} if item.get("text") else item for item in items]
        prompts = [self.prompter.render(self.processor, item) for item in items]
        kwargs = dict(padding=True, padding_side="left", return_tensors="pt")
        if self.processor is self.tokenizer:
            encoded = self.tokenizer(prompts, add_special_tokens=False, **kwargs)
        else:
            images = [item["image"] for item in items if item.get("image")]
            encoded = self.processor(text=prompts, images=images or None, add_special_tokens=False, **kwargs)
        return dict(encoded)


@dataclass
class TripletCollator:
    """Batch of records ``{"anchor", "positive", "negatives": [item, ...]}`` -> encoded columns.

    Output: ``{"anchor": enc, "positive": enc, "negative": enc or None, "num_negatives": K}`` where the
    negatives of anchor i are rows ``i*K ... i*K+K-1`` of ``negative``.
    """

    encoder: ItemEncoder

    def __call__(self, records: list[dict]) -> dict:
        counts = {len(r["negatives"]) for r in records}
        if len(counts) != 1:
            raise ValueError(f"every record in a batch needs the same number of negatives, got counts {sorted(counts)}")
        k = counts.pop()
        negatives = [neg for r in records for neg in r["negatives"]]
        return {
            "anchor": self.encoder([r["anchor"] for r in records]),
            "positive": self.encoder([r["positive"] for r in records]),
            "negative": self.encoder(negatives) if k else None,
            "num_negatives": k,
        }
