"""make bench, parts (b) and (d): lco and sentence-transformers do the same work, and the results say so."""

import json

import pytest
import torch

from lco.bench.__main__ import run
from lco.bench.peers import (add_lora, build, lco_start, lco_train, load_records, lora_state, peer_cfg, st_model,
                             st_run)
from tests.conftest import compose_train

CPU = torch.device("cpu")


def _cfg(tmp_path, extra=()):
    return compose_train(tmp_path / "run", ["peers.batch_size=8", "peers.steps=2", "peers.warmup=1", "peers.rounds=1",
                                            "peers.chunk=4", "peers.encode_items=24", "peers.encode_batch=8",
                                            "peers.encode_rounds=1",
                                            f"output_dir={tmp_path}", *extra], config_name="bench")


def test_st_embeds_lcos_prompts_exactly_as_lco(tmp_path):
    """Same tokens (lco pads left, ST right), same last token after the final norm: the same vectors, LoRA
    included."""
    cfg = peer_cfg(_cfg(tmp_path))
    embedder, method, _, _ = build(cfg)
    method.apply(embedder)
    with torch.no_grad():  # nonzero lora_B, so the check covers the adapters too
        for name, param in embedder.headless.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    st = st_model(cfg, CPU)
    add_lora(st, method, embedder.family.lm_prefix, lora_state(embedder))
    trainable = {n for n, p in st[0].auto_model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state(embedder)) and len(trainable) == 2 * 7 * 2  # layers x targets x (A, B)
    items = [{"text": t} for t in ["A small red cube is at the left.", "hi", "There is a blue cone on the top side."]]
    prompts = embedder.preprocessor.prompts(items)
    features = st.preprocess(prompts)
    ours = embedder.preprocessor(items)
    assert ours["attention_mask"][:, 0].min() == 0 and features["attention_mask"][:, -1].min() == 0
    for row in range(len(items)):
        assert torch.equal(features["input_ids"][row][features["attention_mask"][row].bool()],
                           ours["input_ids"][row][ours["attention_mask"][row].bool()])
    embedder.eval(), st.eval()
    assert torch.allclose(embedder.encode(items), st.encode(prompts, convert_to_tensor=True), atol=1e-6)


@pytest.mark.parametrize("chunk,share_prefix", [(4, False), (None, False), (4, True)])
def test_lco_and_st_trainers_reach_the_same_lora_weights(tmp_path, chunk, share_prefix):
    """Three steps of ST's trainer (cached MNRL, or MNRL) and of lco (cached at the same chunk, or uncached; also
    computing the chat prefix once per chunk) from the same start, data order, scale, AdamW and schedule end on the
    same adapter: the timed runs do the same work."""
    cfg = peer_cfg(_cfg(tmp_path, ["method.dropout=0", "peers.steps=3"]), chunk, share_prefix=share_prefix)
    records = load_records(cfg)
    assert len(records) == 24
    st_times, st = st_run(cfg, *lco_start(cfg, records), chunk=chunk, device=CPU)
    lco_times, embedder = lco_train(cfg, records, CPU)
    assert len(st_times) == len(lco_times) == 3 and all(t > 0 for t in st_times + lco_times)
    ours = lora_state(embedder)
    theirs = {n: p.detach() for n, p in st[0].auto_model.named_parameters() if p.requires_grad}
    assert set(theirs) == set(ours)
    assert any(float(p.abs().max()) > 0 for n, p in ours.items() if "lora_B" in n)  # it did train
    for name, param in ours.items():
        assert torch.allclose(param, theirs[name], atol=1e-5), name  # updates are >= 1e-4


def test_bench_writes_peer_results(tmp_path):
    result = run(_cfg(tmp_path, ["parts=[b,d,e]"]))
    saved = json.loads((tmp_path / "results.json").read_text())
    b, d, e = saved["parts"]["b"], saved["parts"]["d"], saved["parts"]["e"]
    assert b["model"] == d["model"] == e["model"] == "lco-tiny/tiny_text" and result["parts"]["b"]["steps"] == 2
    assert set(b["shapes"]) == set(e["shapes"]) == {"allnli", "uniform"}
    for shape in b["shapes"].values():
        row = shape["rounds"][0]
        for name in ("cached", "uncached", "cached_prefix", "uncached_prefix"):
            assert row[f"{name}_ratio"] == row[f"st_{name}_s"] / row[f"lco_{name}_s"] == shape[f"{name}_ratio_median"]
            assert shape[f"lco_{name}_triplets_per_s"] == 8 / row[f"lco_{name}_s"]
    for name in ("cached", "uncached", "cached_prefix", "uncached_prefix"):
        assert b[f"{name}_ratio"] == min(shape[f"{name}_ratio_median"] for shape in b["shapes"].values())
    assert d["rounds"][0]["ratio"] == d["rounds"][0]["st_s"] / d["rounds"][0]["lco_s"] == d["ratio_median"]
    assert d["min_cosine"] >= 0.999 and d["items"] == 24
    # (e): packing computes (nearly) only real tokens; padding costs All-NLI-shaped batches more than uniform ones
    allnli, uniform = e["shapes"]["allnli"], e["shapes"]["uniform"]
    assert allnli["padded"] < uniform["padded"] <= 1.0 and allnli["padded"] < 0.85
    assert allnli["packed_512"] > 0.9 and allnli["packed_512"] > allnli["padded"]
    assert allnli["time_128"]["speedup"] > 0 and set(allnli["time_128"]) == {"padded_s", "variant_s", "speedup"}
    # a shared prefix: the chat template's 14 opening tokens computed once per pass, so uniform batches (no padding
    # to pack away) compute fewer tokens than their items hold
    assert uniform["padded_shared"] > 1.2 and uniform["packed_512_shared"] >= uniform["padded_shared"]
    assert allnli["padded_shared"] > allnli["padded"] and allnli["packed_512_shared"] > allnli["padded_shared"]
    assert allnli["time_shared"]["speedup"] > 0
    text = (tmp_path / "results.md").read_text()
    assert "## (b) lco vs sentence-transformers training" in text and f"cached **{b['cached_ratio']:.3f}**" in text
    assert f"cached, shared prefix **{b['cached_prefix_ratio']:.3f}**" in text
    assert "### uniform: `nli_shaped(n=16, seed=0, uniform_words=12)`" in text
    assert "## (d) lco vs sentence-transformers embedding" in text and f"**{d['ratio_median']:.3f}**" in text
    assert "## (e) Padding-free packing" in text and f"| allnli | {allnli['padded']:.3f} |" in text


def test_all_nli_shaped_lengths():
    """The stated shape: anchors ~16 words with a long tail, positives/negatives ~9; one token per word."""
    from lco.bench.lengths import NliShaped
    from lco.models.tiny import build_processor

    records = NliShaped(n=2000, seed=1).load()
    words = {side: sorted(len(r[side]["text"].split()) if side != "negatives" else len(r[side][0]["text"].split())
                          for r in records) for side in ("anchor", "positive", "negatives")}
    assert 14 <= words["anchor"][1000] <= 18 and 8 <= words["positive"][1000] <= 10
    assert words["anchor"][200] <= 11 and words["anchor"][1800] >= 25 and words["anchor"][-1] <= 80
    tokenizer = build_processor("tiny_text")
    text = records[0]["anchor"]["text"]
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == len(text.split())
    uniform = NliShaped(n=50, uniform_words=12).load()
    assert {len(r["positive"]["text"].split()) for r in uniform} == {12}
    with pytest.raises(ValueError, match="uniform_words=0"):
        NliShaped(uniform_words=0)
