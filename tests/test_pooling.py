"""The pooled vector is the last real token's state after the final norm, under left padding."""

import torch

from lco.models.embedder import Embedder
from lco.models.pooling import last_token, pool


def test_last_token_under_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert last_token(hidden, left).flatten().tolist() == [3.0, 7.0]
    assert last_token(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left).flatten().tolist() == [3.0, 7.0] and pool(hidden, left).dtype == torch.float32
    assert pool(hidden, left, "mean").flatten().tolist() == [2.5, 5.5] and pool(hidden, right, "mean")[0, 0] == 0.5


def test_pooled_vector_is_final_norm_state_of_last_real_token(tiny_backbone):
    for name in ("tiny_text", "tiny_omni"):
        backbone = tiny_backbone(name)
        embedder = Embedder(backbone, normalize=False).eval()
        items = [{"text": "a"}, {"text": "a much longer sentence about a small red cube on the left"}]
        batch = embedder.preprocessor(items)
        assert batch["attention_mask"][0, 0] == 0, "short item must be left-padded"
        pooled = embedder(batch)
        # reference: each prompt alone, no padding; capture the decoder's final norm output
        captured = []
        norm = embedder.headless.language_model.norm if name == "tiny_omni" else embedder.headless.norm
        handle = norm.register_forward_hook(lambda m, i, o: captured.append(o))
        for row, item in enumerate(items):
            single = embedder.preprocessor([item])
            with torch.no_grad():
                backbone.model(**single, use_cache=False)
            assert torch.allclose(pooled[row], captured[-1][0, -1], atol=1e-5), name
            assert single["input_ids"][0, -1] != backbone.tokenizer.pad_token_id
        handle.remove()
