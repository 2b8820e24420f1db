"""Matryoshka embeddings (``loss.matryoshka_dims`` / ``matryoshka_weights``): the loss is the weighted sum of
InfoNCE over the leading dimensions, re-normalised (hand computation); bad dimensions stop before training;
``Embedder.encode(dim=k)``, ``lco.evaluate``'s encoder and the exported sentence-transformers folder
(``truncate_dim``) serve the first k dimensions re-normalised; the card records the dimensions."""

import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lco.callbacks import save_embedder
from lco.errors import ConfigError
from lco.evaluation.mteb_encoder import MtebEncoder
from lco.export import export
from lco.losses import InfoNCE
from lco.methods.lora import LoRA
from lco.models.embedder import Embedder
from lco.models.loading import load_embedder
from lco.module import ContrastiveModule
from lco.step import Step

TEXTS = ["A man is playing a guitar.", "Two dogs run across a snowy field.", "A red cube on a table."]


def _unit(*shape, seed):
    return F.normalize(torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_loss_is_the_weighted_sum_over_leading_dimensions():
    a, p, n = _unit(4, 16, seed=1), _unit(4, 16, seed=2), _unit(8, 16, seed=3)
    loss = InfoNCE(temperature=0.05, matryoshka_dims=[16, 4, 2], matryoshka_weights=[1, 0.5, 0.25])(a, p, n)
    expected = 0.0
    for dim, weight in ((16, 1.0), (4, 0.5), (2, 0.25)):
        ad, pd, nd = (F.normalize(x[:, :dim], dim=-1) for x in (a, p, n))
        logits = torch.cat([ad @ pd.T, ad @ nd.T], dim=1) / 0.05
        expected += weight * -torch.log_softmax(logits, dim=1).diagonal().mean()
    assert torch.allclose(loss, expected, atol=1e-12)
    assert torch.allclose(InfoNCE(temperature=0.05, matryoshka_dims=[16])(a, p, n), InfoNCE(temperature=0.05)(a, p, n))


@pytest.mark.parametrize("dims, weights, says", [([64, 0], None, "matryoshka_dims"), ([8, 8], None, "matryoshka_dims"),
                                                 ([8, 4], [1], "matryoshka_weights"),
                                                 (None, [1], "matryoshka_dims is null")])
def test_bad_settings_are_refused(dims, weights, says):
    with pytest.raises(ConfigError, match=says):
        InfoNCE(matryoshka_dims=dims, matryoshka_weights=weights)


def test_dimensions_past_the_embedding_stop_before_training(tiny_backbone):
    with pytest.raises(ConfigError, match=r"loss.matryoshka_dims=\[128, 16\] goes past the 64 dimensions"):
        ContrastiveModule(Embedder(tiny_backbone()), LoRA(r=2), InfoNCE(matryoshka_dims=[128, 16]), Step(),
                          partial(torch.optim.AdamW), gradient_checkpointing=False, max_nonfinite_skips=0)


def test_truncated_embeddings_are_served_everywhere(tmp_path, tiny_backbone):
    embedder = Embedder(tiny_backbone()).eval()
    torch.manual_seed(0)
    method = LoRA(r=4, alpha=8, dropout=0.0)
    method.apply(embedder)
    with torch.no_grad():
        for name, param in embedder.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    batch = embedder.preprocessor([{"text": t} for t in TEXTS])
    with torch.no_grad():  # the raw pooled state: last token after the final norm, not normalised
        raw = embedder.headless(**batch, use_cache=False).last_hidden_state[:, -1]
    assert torch.allclose(embedder.encode(TEXTS, dim=16), F.normalize(raw[:, :16], dim=-1), atol=1e-6)
    with pytest.raises(ConfigError, match="dim=65 is not valid"):
        embedder.encode(TEXTS, dim=65)

    checkpoint = save_embedder(embedder, method, tmp_path / "adapter", loss=InfoNCE(matryoshka_dims=[64, 16]))
    assert json.loads((checkpoint / "lco_embedding.json").read_text())["matryoshka_dims"] == [64, 16]
    reference = load_embedder(checkpoint).encode(TEXTS, dim=16)
    out = tmp_path / "model"
    export(checkpoint, out, verify=False)
    assert "trained on the leading 64, 16 dimensions" in (out / "README.md").read_text()
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out), truncate_dim=16).encode(TEXTS, normalize_embeddings=True)
    assert st.shape == (3, 16) and float((torch.as_tensor(st) - reference).abs().max()) < 1e-5
    encoder = MtebEncoder(load_embedder(out), dim=16)
    served = encoder.encode([{"text": TEXTS}], task_metadata=None, hf_split="test", hf_subset="default")
    assert encoder.mteb_model_meta.embed_dim == 16 and float((torch.as_tensor(served) - reference).abs().max()) < 1e-5
