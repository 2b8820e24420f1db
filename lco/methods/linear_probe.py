"""Linear probe: the backbone frozen, one trainable linear map on the pooled embedding (before normalisation).

The map starts as the identity (``dim`` = hidden size) so step 0 reproduces the base model's embeddings, or
orthogonal when ``dim`` differs. ``save`` writes ``head.safetensors`` (``weight`` [dim, hidden], ``bias`` [dim]).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lco.methods.base import Method


class LinearProbe(Method):
    name = "linear_probe"

    def __init__(self, dim: int | None = None, bias: bool = True):
        self.dim, self.bias = dim, bias

    def apply(self, embedder) -> None:
        embedder.model.requires_grad_(False)
        hidden = embedder.hidden_size
        head = nn.Linear(hidden, self.dim or hidden, bias=self.bias)
        with torch.no_grad():
            if head.out_features == hidden:
                head.weight.copy_(torch.eye(hidden))
            else:
                nn.init.orthogonal_(head.weight)
            if head.bias is not None:
                head.bias.zero_()
        embedder.head = head.to(next(embedder.model.parameters()).device)

    def save(self, embedder, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in embedder.head.state_dict().items()},
                  str(out / "head.safetensors"))
        return out

    def card(self) -> dict:
        return {"method": self.name, "head": "head.safetensors (applied to the pooled vector before normalising)"}

    @classmethod
    def load(cls, embedder, folder: str | Path) -> None:
        state = load_file(str(Path(folder) / "head.safetensors"))
        out_dim, hidden = state["weight"].shape
        head = nn.Linear(hidden, out_dim, bias="bias" in state)
        head.load_state_dict(state)
        embedder.head = head.to(next(embedder.model.parameters()).device)
