"""Per-layer pooled states of the language decoder, for layer-wise analysis.

``layer_states(embedder, items)`` -> float32 [L + 1, N, D]: entry l < L is the output of decoder layer l at
each item's last real token; entry L is the final-norm state there (the embedding before any head). Items
are prompted and processed exactly as in training.
"""

from __future__ import annotations

import torch
from peft import PeftModel

from lco.models.pooling import last_token


def decoder_layers(embedder) -> torch.nn.ModuleList:
    model = embedder.model.get_base_model() if isinstance(embedder.model, PeftModel) else embedder.model
    return model.get_submodule(embedder.family.lm_prefix).layers


@torch.no_grad()
def layer_states(embedder, items: list[dict], batch_size: int = 16) -> torch.Tensor:
    layers = decoder_layers(embedder)
    device = next(embedder.model.parameters()).device
    chunks = []
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in embedder.preprocessor(items[start: start + batch_size]).items()}
        outputs: list[torch.Tensor] = []
        hooks = [layer.register_forward_hook(
            lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out)) for layer in layers]
        try:
            final = embedder.headless(**batch, use_cache=False, return_dict=True).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        mask = batch["attention_mask"]
        chunks.append(torch.stack([last_token(h, mask).float().cpu() for h in (*outputs, final)]))
    return torch.cat(chunks, dim=1)
