"""Backbone + pooling + normalisation: the embedding model lco trains and serves.

``Embedder(backbone, preprocessor)``: the preprocessor (``lco/preprocess.py``, the same object the data's
collator uses in training) turns items into processor batches for ``encode``. ``Embedder(inputs)`` takes one
processor batch (``input_ids`` [N, T], ``attention_mask`` [N, T], optional
media tensors) and returns float32 embeddings [N, D]. The default is the reference: the final hidden state
*after* the decoder's last norm (the headless model's ``last_hidden_state``; the LM head is never run) at the
last real token, L2-normalised. A method may insert a trainable ``head`` between pooling and normalisation.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from lco.errors import ConfigError
from lco.models.backbone import Backbone
from lco.models.pooling import pool, pool_packed
from lco.preprocess import Preprocessor
from lco.prompts import Prompter
from lco.step.pack import PACK_KEYS
from lco.step.pack_media import media_inputs
from lco.step.prefix import prefix_states, prefixed_forward


class Embedder(nn.Module):
    """``preprocessor``: None means the reference preprocessing (``Preprocessor``'s defaults, which equal
    ``conf/preprocess/reference.yaml``) for the backbone's processor."""

    def __init__(self, backbone: Backbone, preprocessor: Preprocessor | None = None, pooling: str = "last",
                 normalize: bool = True):
        super().__init__()
        self.model = backbone.model  # the transformers model; a method may wrap it (LoRA: a PeftModel)
        self.backbone = backbone
        self.head: nn.Module = nn.Identity()  # a method may put a trainable projection here (linear probe)
        self.pooling = pooling
        self.normalize = normalize
        self.preprocessor = preprocessor or Preprocessor(backbone.processor, Prompter())

    @property
    def family(self):
        return self.backbone.family

    @property
    def headless(self) -> nn.Module:
        """The decoder without LM head (``*ForCausalLM.model``), whose output is after the final norm."""
        model = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        return model.model

    def forward(self, inputs: dict[str, torch.Tensor], prefix: tuple[torch.Tensor, ...] | None = None
                ) -> torch.Tensor:
        """A processor batch, or a packed one (``lco/step/pack.py``: items end to end, no ``attention_mask``,
        ``item_ids`` and ``last_index`` for pooling; a media pass: ``lco/step/pack_media.py``; rows behind a shared
        ``prefix_ids``: ``lco/step/prefix.py``, whose ``prefix_states`` may be given) -> float32 [N, D], one row
        per item."""
        if "prefix_ids" in inputs:  # rows behind a prefix computed once for the pass
            hidden, prefix = prefixed_forward(self.headless, inputs, prefix)
        else:
            if "pack_index" in inputs:  # a packed media pass: positions and tokens gathered on the device
                model_inputs = media_inputs(self.headless, inputs, self.pad_token_id)
            else:
                model_inputs = {k: v for k, v in inputs.items() if k not in PACK_KEYS}
            hidden = self.headless(**model_inputs, use_cache=False, return_dict=True).last_hidden_state
        if "last_index" in inputs:
            pooled = pool_packed(hidden, inputs["item_ids"], inputs["last_index"], self.pooling, prefix)
        else:
            pooled = pool(hidden, inputs["attention_mask"], self.pooling, prefix)
        vectors = self.head(pooled)
        return F.normalize(vectors, dim=-1) if self.normalize else vectors

    def prefix_states(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """A pass's shared prefix (``inputs["prefix_ids"]``) through the decoder, for ``forward``'s ``prefix``."""
        return prefix_states(self.headless, inputs)

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    @property
    def out_dim(self) -> int:
        """Size of the embeddings: the head's output (linear probe) or the hidden size."""
        return getattr(self.head, "out_features", self.hidden_size)

    @property
    def pad_token_id(self) -> int:
        return self.preprocessor.pad_token_id

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The language decoder's layers (LoRA-wrapped ones included), e.g. for regional compilation."""
        model = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        return model.get_submodule(f"{self.family.lm_prefix}.layers")

    @property
    def position_rows(self) -> int:
        return self.backbone.position_rows

    @property
    def placeholder_ids(self) -> dict[str, int | None]:
        return self.backbone.placeholder_ids

    def card(self) -> dict:
        """This embedder's part of ``lco_embedding.json``: family, base model, pooling, preprocessing."""
        return {"family": self.family.name, "base_model": self.backbone.path, "pooling": self.pooling,
                "normalize": self.normalize, **self.preprocessor.card()}

    @torch.no_grad()
    def encode(self, items: list, batch_size: int = 32, progress: bool = False, dim: int | None = None,
               prompt_name: str | None = None) -> torch.Tensor:
        """Embed items (``{"text", "image", "audio", "video"}`` dicts, or plain strings) with training's prompts
        and pooling. Items are batched by length (longest first) to waste little padding; the output keeps
        the input order. Returns float32 [N, D] on CPU; ``dim``: the first ``dim`` dimensions, re-normalised
        (a Matryoshka embedding: ``loss.matryoshka_dims``); ``prompt_name``: a training source's own prompt
        (``preprocess.source_prompts``, in the card) for every item, e.g. for the queries of that task."""
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= self.out_dim):
            raise ConfigError(f"dim={dim!r} is not valid: a number of leading dimensions from 1 to {self.out_dim}.")
        items = [{"text": it} if isinstance(it, str) else it for it in items]
        if prompt_name is not None:
            self.preprocessor.prompter_for({"prompt": prompt_name})  # an unknown name fails here, before any work
            items = [{**it, "prompt": prompt_name} for it in items]
        order = sorted(range(len(items)), key=lambda i: -_size(items[i]))
        device = next(self.model.parameters()).device
        out = torch.empty(0)
        with _progress(len(items), progress) as advance:
            for start in range(0, len(items), batch_size):
                chunk = order[start: start + batch_size]
                batch = self.preprocessor([items[i] for i in chunk])
                vectors = self({k: v.to(device) for k, v in batch.items()}).cpu()
                if out.numel() == 0:
                    out = torch.empty(len(items), vectors.shape[1])
                out[chunk] = vectors
                advance(len(chunk))
        if dim is None:
            return out
        return F.normalize(out[:, :dim], dim=-1) if self.normalize else out[:, :dim].contiguous()


def _size(item: dict) -> int:
    """Sort key for length grouping: media first (they expand to many tokens), then text length."""
    return 10_000 * sum(item.get(m) is not None for m in ("image", "audio", "video")) + len(item.get("text") or "")


@contextlib.contextmanager
def _progress(total: int, enabled: bool):
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("encoding", total=total)
        yield lambda n: bar.advance(task, n)


def configured(cfg, backbone: Backbone | None = None) -> Embedder:
    """The embedder a composed config describes (``model``, ``preprocess``, ``embed``), on ``backbone`` if given;
    for the entry points that embed without training (``lco.evaluate``, ``lco.analyze``, the bench)."""
    from hydra.utils import instantiate

    backbone = backbone if backbone is not None else instantiate(cfg.model)
    return instantiate(cfg.embed)(backbone, instantiate(cfg.preprocess)(backbone.processor))
