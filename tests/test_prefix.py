"""A shared prefix (``lco/step/prefix.py``, ``step.share_prefix``): the tokens every item of a text pass begins with
(the chat template's system turn and user header) are computed once per pass, GradCache or not, and the
embeddings, loss and gradients equal the padded path's (fp32, CPU: within 1e-5 relative) on every tiny twin
family, padded or packed, with GradCache in items or tokens, with mean pooling; the layout and the mask are
checked entry by entry, and a user's run logs what the prefix spared."""

import os
import subprocess
import sys

import pytest
import torch
from torch.nn.functional import normalize

import lco.models.embedder
import lco.step.prefix
from lco.errors import BatchLayoutError, ConfigError
from lco.models.pooling import pool_packed
from lco.module import checkpointing
from lco.step import Step
from lco.step.pack import pack
from lco.step.prefix import (attention_mask, common_prefix, drop_prefix, positions_after, prefix_states,
                             prefixed_forward)
from tests.test_bad_values import SMALL
from tests.test_packing import FAMILIES, _embedder, _metrics, _relative, _step_result, _text_records

# the Qwen2.5 chat template's opening, every item's: <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
# <|im_start|>user\n
CHAT_PREFIX = 14


def test_common_prefix_is_the_longest_shared_one_and_leaves_every_item_a_token():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9], [0, 5, 6, 7, 1, 2]])
    mask = (ids != 0).long()
    assert common_prefix({"input_ids": ids, "attention_mask": mask}) == 3  # 5 6 7, wherever padding puts it
    right = torch.tensor([[5, 6, 7, 8, 0, 0], [5, 6, 7, 9, 9, 9]])
    assert common_prefix({"input_ids": right, "attention_mask": (right != 0).long()}) == 3
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])  # identical items: the last token stays each item's own
    assert common_prefix({"input_ids": same, "attention_mask": torch.ones_like(same)}) == 2
    assert common_prefix({"input_ids": ids[:1], "attention_mask": mask[:1]}) == 0  # one item shares with no one
    rest, prefix = drop_prefix({"input_ids": ids, "attention_mask": mask}, 3)
    assert prefix.tolist() == [[5, 6, 7]]  # the columns left holding only padding are gone
    assert rest["input_ids"].tolist() == [[6, 7, 8], [9, 9, 9], [7, 1, 2]]  # masked: the dropped tokens
    assert rest["attention_mask"].tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 1]]
    positions = positions_after(rest["attention_mask"], 3, position_rows=4)
    assert positions.shape == (4, 3, 3) and (positions == positions[0]).all()
    assert positions[0].tolist() == [[3, 3, 3], [3, 4, 5], [3, 3, 4]]  # each item's tokens go on from the prefix


def test_each_token_sees_the_prefix_and_its_own_item_only():
    item_ids = torch.tensor([[0, 0, 1, -1]])  # item 0 (2 tokens), item 1 (1 token), padding
    allowed = attention_mask(item_ids, 2, "sdpa", torch.float32)
    assert allowed.shape == (1, 1, 4, 6) and allowed.dtype == torch.bool
    assert allowed[0, 0].int().tolist() == [[1, 1, 1, 0, 0, 0],
                                           [1, 1, 1, 1, 0, 0],
                                           [1, 1, 0, 0, 1, 0],
                                           [1, 1, 0, 0, 0, 0]]
    additive = attention_mask(item_ids, 2, "eager", torch.float32)
    assert torch.equal(additive == 0, allowed) and additive.min() == torch.finfo(torch.float32).min
    with pytest.raises(BatchLayoutError, match="not flash_attention_2"):
        attention_mask(item_ids, 2, "flash_attention_2", torch.float32)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("family,name", FAMILIES)
def test_embeddings_behind_a_shared_prefix_equal_padded(family, name, pooling):
    embedder = _embedder(family, name, pooling).eval()
    padded = embedder.preprocessor([r[s] for r in _text_records(6) for s in ("anchor", "positive")])
    size = common_prefix(padded)
    assert size == CHAT_PREFIX
    rest, prefix_ids = drop_prefix(padded, size)
    assert rest["input_ids"].shape[1] == padded["input_ids"].shape[1] - size
    rows, _, restore = pack(rest, 64, embedder.pad_token_id, embedder.position_rows)
    rows["position_ids"] += size
    rest["position_ids"] = positions_after(rest["attention_mask"], size, embedder.position_rows)
    with torch.no_grad():
        reference = embedder(padded)
        vectors = embedder({**rows, "prefix_ids": prefix_ids})[restore]
        padded_rows = embedder({**rest, "prefix_ids": prefix_ids})
        hidden, prefix = prefixed_forward(embedder.headless, {**rows, "prefix_ids": prefix_ids})
    assert prefix.shape == (size, embedder.hidden_size) and hidden.shape[:2] == rows["input_ids"].shape
    assert _relative(vectors, reference) <= 1e-5 and _relative(padded_rows, reference) <= 1e-5
    pooled = pool_packed(hidden, rows["item_ids"], rows["last_index"], pooling, prefix)
    assert torch.equal(normalize(pooled, dim=-1)[restore], vectors)


STEPS = {"padded": dict(pack=False), "packed": dict(pack=True), "items": dict(pack=False, cache_chunk=4),
         "tokens": dict(pack=True, cache_tokens=150)}


@pytest.mark.parametrize("family,name", FAMILIES)
def test_loss_and_gradients_with_a_shared_prefix_equal_padded(family, name, monkeypatch):
    """Also: the prefix goes through the decoder once per pass, GradCache chunks or not (once more in the
    replay, with its graph)."""
    records = _text_records()
    loss, grads, planned = _step_result(family, name, Step(pack=False), records)
    padded = planned["tokens"]
    calls = []

    def counted(headless, inputs):
        calls.append(inputs["prefix_ids"].shape)
        return prefix_states(headless, inputs)

    for module in (lco.step.prefix, lco.models.embedder):
        monkeypatch.setattr(module, "prefix_states", counted)
    for what, knobs in STEPS.items():
        calls.clear()
        shared_loss, shared_grads, planned = _step_result(family, name, Step(share_prefix=True, **knobs), records)
        (only,) = planned["passes"]  # 12 triplets' three text sides, one pass
        chunks = len(only["chunks"] or [None])
        assert only["prefix"] == CHAT_PREFIX and only["packed"] == knobs["pack"], what
        assert (chunks > 2) == ("cache_chunk" in knobs or "cache_tokens" in knobs), what
        assert calls == [(1, CHAT_PREFIX)] * (1 if chunks == 1 else 2), what
        tokens = planned["tokens"]
        assert tokens["real"] == padded["real"] and tokens["shared"] == 35 * CHAT_PREFIX, what
        assert tokens["computed"] < padded["computed"] - tokens["shared"] / 2, what
        assert abs(float(shared_loss - loss)) <= 1e-5 * abs(float(loss)), what
        assert _relative(shared_grads, grads) <= 1e-5, what
    mean_loss, mean_grads, _ = _step_result(family, name, Step(pack=False), records, pooling="mean")
    shared_loss, shared_grads, _ = _step_result(family, name, Step(pack=True, share_prefix=True), records,
                                                pooling="mean")
    assert abs(float(shared_loss - mean_loss)) <= 1e-5 * abs(float(mean_loss))
    assert _relative(shared_grads, mean_grads) <= 1e-5


def test_a_checkpointed_decoder_is_refused_not_mistrained():
    """transformers drops the cache inside a checkpointed layer, so the items would silently lose the prefix:
    the embedder stops instead, and ``module.gradient_checkpointing=auto`` does not checkpoint when sharing."""
    embedder = _embedder("qwen2", "tiny_text").train()
    embedder.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    step = Step(share_prefix=True)
    planned = step.plan(embedder_batch(embedder), embedder.pad_token_id, {}, 1)
    with pytest.raises(BatchLayoutError, match="set module.gradient_checkpointing=false"):
        embedder(planned["passes"][0]["inputs"])
    assert checkpointing("auto", cuda=True, caches=False, shares_prefix=True) is False
    with pytest.raises(ConfigError, match="step.share_prefix='yes' is not valid"):
        Step(share_prefix="yes")


def embedder_batch(embedder) -> dict:
    from lco.data.collate import TripletCollator

    return TripletCollator(embedder.preprocessor)(_text_records(4))


def test_a_run_with_a_shared_prefix_logs_what_it_spared(tmp_path):
    """``python -m lco.train ... step.share_prefix=true``: the run logs the share of its real tokens the prefix
    spared and a real-token fraction that still counts padding only; the first step's loss equals the run's
    without sharing (later ones differ: LoRA dropout draws the prefix's mask once per pass)."""
    plain = _metrics(tmp_path / "plain", "step.pack=false")
    shared = _metrics(tmp_path / "shared", "step.pack=true", "step.pack_tokens=4096", "step.share_prefix=true")
    assert len(plain) == len(shared) == 3
    for row in shared:
        assert 0.15 < float(row["train/shared_prefix_fraction"]) < 0.4  # 14 of each scene item's ~50 tokens
        assert float(row["train/real_token_fraction"]) == 1.0  # one packed row, no padding
    assert "train/shared_prefix_fraction" not in plain[0] or not plain[0]["train/shared_prefix_fraction"]
    assert float(shared[0]["train/loss"]) == pytest.approx(float(plain[0]["train/loss"]), rel=1e-5)


def test_what_cannot_carry_a_shared_prefix_stops_before_anything_loads(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lco.train", f"paths.log_dir={tmp_path}", *SMALL,
                           "step.share_prefix=true", "module.gradient_checkpointing=true",
                           "model.attn_implementation=flash_attention_2"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    message = proc.stderr[proc.stderr.index("lco: error:"):]
    assert "step.share_prefix=true and module.gradient_checkpointing=true cannot be combined" in message
    assert "not model.attn_implementation=flash_attention_2. Set model.attn_implementation=sdpa" in message
    assert "Loading weights" not in proc.stdout + proc.stderr
