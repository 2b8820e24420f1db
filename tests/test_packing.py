"""Padding-free packing (``lco/step/pack.py``, ``pack_media.py``, ``step.pack``): packed passes give the padded
path's embeddings, loss and gradients (fp32, CPU: within 1e-5 relative) on every tiny twin family, for text,
image, audio and video items, with GradCache counted in items or tokens, with mean pooling; the layout itself is
checked token by token, and a user's run logs how much of its computation is real tokens."""

import csv
import os
import random
import subprocess
import sys
from functools import partial

import pytest
import torch

from lco.data.collate import TripletCollator
from lco.errors import ConfigError
from lco.losses import InfoNCE
from lco.methods.lora import LoRA
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.module import ContrastiveModule, checkpointing
from lco.step import Step
from lco.step.pack import assign_rows, pack
from lco.step.pack_media import pack_media
from tests.media_fixtures import write_media
from tests.test_step import _records

FAMILIES = [("qwen2", "tiny_text"), ("qwen2_5_vl", "tiny_vl"), ("qwen2_5_omni", "tiny_omni")]
WORDS = "a red blue big small circle square near the left right of picture seen from far away two green".split()


def _text_records(n=12, seed=0) -> list[dict]:
    """Triplets of 1 to 30 words: lengths that differ, so the padded path pads and packing has work to do."""
    rng = random.Random(seed)
    say = lambda k: {"text": " ".join(rng.choices(WORDS, k=rng.randint(1, k)))}  # noqa: E731
    return [{"anchor": say(30), "positive": say(12), "negatives": [say(12)]} for _ in range(n)]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return root, write_media(root)


def _embedder(family, name, pooling="last"):
    torch.manual_seed(0)
    return Embedder(load_backbone(family, f"lco-tiny/{name}"), pooling=pooling)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _step_result(family, name, step, records, pooling="last", loss=None):
    """(loss, flattened LoRA gradients, planned batch) of one training step of the real module (``loss``: an
    ``InfoNCE``, the reference's by default)."""
    embedder = _embedder(family, name, pooling)
    module = ContrastiveModule(embedder, LoRA(r=4, alpha=8, dropout=0.0), loss or InfoNCE(), step,
                               partial(torch.optim.SGD, lr=0.1), gradient_checkpointing=False, max_nonfinite_skips=0)
    for n, p in module.named_parameters():  # LoRA B starts at zero: give it values so A gets gradients too
        if "lora_B" in n:
            with torch.no_grad():
                p.copy_(torch.randn_like(p, generator=torch.Generator().manual_seed(len(n))) * 0.1)
    planned = module.on_before_batch_transfer(TripletCollator(embedder.preprocessor)(records), 0)
    loss = module.batch_loss(planned)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for _, p in sorted(module.named_parameters()) if p.requires_grad])
    return loss.detach(), grads, planned


def test_rows_are_evenly_filled_within_the_budget():
    lengths = [random.Random(i).randint(20, 100) for i in range(96)]  # All-NLI-like items, ~5800 tokens
    rows = assign_rows(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(96))  # every item once
    fills = [sum(lengths[i] for i in row) for row in rows]
    assert len(rows) == -(-sum(lengths) // 512) and max(fills) <= 512  # the fewest rows, none over the budget
    assert sum(fills) / (len(rows) * max(fills)) > 0.98  # as wide as the fullest row, and that pads little
    assert assign_rows([700, 20], 512) == [[0], [1]]  # an item longer than the budget: a row of its own
    assert assign_rows([30, 500, 30], 512) == [[1], [0, 2]]  # nothing fits beside 500: a new row


def test_pack_lays_items_end_to_end_with_their_own_positions():
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25], [0, 0, 0, 31, 32]])
    mask = (ids != 0).long()
    out, spans, restore = pack({"input_ids": ids, "attention_mask": mask}, width=7, pad_id=0, position_rows=4)
    assert spans == [(0, 1), (1, 3)]  # 2 rows: the 5-token item alone, then the 3- and 2-token ones
    assert restore.tolist() == [1, 0, 2]  # packed order is items 1, 0, 2
    assert out["input_ids"].tolist() == [[21, 22, 23, 24, 25], [11, 12, 13, 31, 32]]
    assert out["position_ids"].shape == (4, 2, 5)
    assert (out["position_ids"] == out["position_ids"][0]).all()  # text: the 3 rotary rows equal the text row
    assert out["position_ids"][0].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert out["item_ids"].tolist() == [[0, 0, 0, 0, 0], [1, 1, 1, 2, 2]]
    assert out["last_index"].tolist() == [4, 5 + 2, 5 + 4]
    assert "attention_mask" not in out  # transformers reads the packing from position_ids
    single, _, none = pack({"input_ids": ids[:1], "attention_mask": mask[:1]}, width=7, pad_id=0)
    assert none is None and single["position_ids"].tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("family,name", FAMILIES)
def test_packed_embeddings_equal_padded(family, name):
    embedder = _embedder(family, name).eval()
    items = [r[side] for r in _text_records(6) for side in ("anchor", "positive")]
    padded = embedder.preprocessor(items)
    packed, _, restore = pack(padded, 64, embedder.pad_token_id, embedder.position_rows)
    with torch.no_grad():
        reference, vectors = embedder(padded), embedder(packed)[restore]
    assert packed["input_ids"].shape[0] > 1  # several rows, several items per row
    assert vectors.shape == reference.shape == (12, embedder.hidden_size)
    assert _relative(vectors, reference) <= 1e-5


@pytest.mark.parametrize("family,name", FAMILIES)
def test_packed_loss_and_gradients_equal_padded(family, name):
    records = _text_records()
    loss, grads, planned = _step_result(family, name, Step(pack=False), records)
    assert not any(p["packed"] for p in planned["passes"])
    real, computed = planned["tokens"]["real"], planned["tokens"]["computed"]
    assert computed > 1.2 * real  # the padded path computes padding
    for step in (Step(pack=True), Step(pack=True, pack_tokens=96), Step(pack=True, cache_chunk=4),
                 Step(pack=True, cache_tokens=150)):
        packed_loss, packed_grads, packed_plan = _step_result(family, name, step, records)
        assert all(p["packed"] for p in packed_plan["passes"]) and len(packed_plan["passes"]) == 1, step
        assert packed_plan["tokens"]["real"] == real and packed_plan["tokens"]["computed"] < computed, step
        assert abs(float(packed_loss - loss)) <= 1e-5 * abs(float(loss)), step
        assert _relative(packed_grads, grads) <= 1e-5, step
    assert packed_plan["passes"][0]["chunks"] and len(packed_plan["passes"][0]["chunks"]) > 2  # GradCache chunked


def test_packed_mean_pooling_equals_padded():
    records = _text_records(8)
    loss, grads, _ = _step_result("qwen2", "tiny_text", Step(pack=False), records, pooling="mean")
    packed_loss, packed_grads, _ = _step_result("qwen2", "tiny_text", Step(pack=True, pack_tokens=80), records,
                                                pooling="mean")
    assert abs(float(packed_loss - loss)) <= 1e-5 * abs(float(loss))
    assert _relative(packed_grads, grads) <= 1e-5


@pytest.mark.parametrize("family,name", FAMILIES[1:])
def test_packed_media_embeddings_equal_padded(media, family, name):
    """Text, image, audio (Omni) and video items, and text beside an image, packed in order into one row or
    several: the model's own multimodal rotary positions are gathered per item, and each item's embedding is
    the padded batch's."""
    root, files = media
    items = [{"text": "a red circle"}, {"text": "", "image": str(root / files["image"][1])},
             {"text": "", "audio": str(root / files["audio"][2])},
             {"text": "x", "video": str(root / files["video"][3])},
             {"text": "a picture of", "image": str(root / files["image"][0])}]
    items = [item for item in items if family == "qwen2_5_omni" or "audio" not in item]
    embedder = _embedder(family, name).eval()
    padded = embedder.preprocessor(items)
    with torch.no_grad():
        reference = embedder(padded)
        for width, rows in ((10_000, 1), (64, None)):
            packed, spans = pack_media(padded, width)
            assert rows is None or len(spans) == rows
            assert packed["pack_index"].numel() <= padded["input_ids"].numel() - (rows == 1)
            assert _relative(embedder(packed), reference) <= 1e-5


def test_media_passes_pack_and_the_batch_still_matches(media):
    """Anchors with text, an image, an audio clip and a video are one packed media pass, the text sides another;
    loss and gradients equal the padded path's, without GradCache and with it (in tokens: the media pass's chunks
    each take their items' padded rows and media tensors; in items)."""
    records = _records(media)
    loss, grads, _ = _step_result("qwen2_5_omni", "tiny_omni", Step(pack=False), records)
    for step in (Step(pack=True), Step(pack=True, cache_tokens=200), Step(pack=True, cache_chunk=1)):
        packed_loss, packed_grads, planned = _step_result("qwen2_5_omni", "tiny_omni", step, records)
        layout = {tuple(p["sides"]): p["packed"] for p in planned["passes"]}
        assert layout == {(0,): True, (1, 2): True}, layout
        if step.caches:
            chunks = planned["passes"][0]["chunks"]
            assert len(chunks) > 1 and sum(bool(c["media"]) for c in chunks) > 1, chunks  # media split over chunks
        assert abs(float(packed_loss - loss)) <= 1e-5 * abs(float(loss))
        assert _relative(packed_grads, grads) <= 1e-5


def test_cache_tokens_chunks_padded_passes_by_their_token_budget():
    records = _text_records()
    loss, grads, _ = _step_result("qwen2", "tiny_text", Step(pack=False), records)
    cached_loss, cached_grads, planned = _step_result("qwen2", "tiny_text", Step(pack=False, cache_tokens=150),
                                                      records)
    (only,) = planned["passes"]
    width = only["inputs"]["input_ids"].shape[1]
    costs = [(c["rows"][1] - c["rows"][0]) * (width - c["first_col"]) for c in only["chunks"]]
    assert len(costs) > 3 and max(costs) <= 150 and sum(costs) == planned["tokens"]["computed"]
    assert abs(float(cached_loss - loss)) <= 1e-5 * abs(float(loss))
    assert _relative(cached_grads, grads) <= 1e-5


def test_step_refuses_bad_packing_and_cache_settings():
    with pytest.raises(ConfigError, match="step.cache_chunk=8 and step.cache_tokens=1024 are both set"):
        Step(cache_chunk=8, cache_tokens=1024)
    with pytest.raises(ConfigError, match="step.pack='yes' is not valid"):
        Step(pack="yes")
    with pytest.raises(ConfigError, match="step.pack_tokens=0 is not valid: tokens per packed row"):
        Step(pack_tokens=0)
    step = Step()  # auto: packs on CUDA only (sdpa's masked attention makes wide rows cost more on CPU)
    step.setup("cpu")
    assert not step.packs
    step.setup("cuda")
    assert step.packs


def test_gradient_checkpointing_auto_skips_the_gradcache_replay():
    """``auto`` checkpoints on CUDA, but not under GradCache: its chunks already bound activation memory, and
    checkpointing the replay would pay a third forward pass."""
    assert checkpointing("auto", cuda=True, caches=False) is True
    assert checkpointing("auto", cuda=True, caches=True) is False
    assert checkpointing("auto", cuda=False, caches=False) is False
    assert checkpointing(True, cuda=True, caches=True) is True  # an explicit choice stands


def _metrics(tmp_path, *extra) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "lco.train", "model=tiny_text", "data=scenes",
                           "data.sources.scenes.n=64", "data.sources.scenes.detail=4", "data.val_size=8",
                           "data.batch_size=8", "trainer.max_steps=3", "trainer.log_every_n_steps=1", "logger=csv",
                           f"paths.log_dir={tmp_path}", *extra], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("train/runs/*/csv/**/metrics.csv")
    with open(path) as f:
        return [row for row in csv.DictReader(f) if row.get("train/real_token_fraction")]


def test_a_run_logs_its_real_token_fraction(tmp_path):
    padded = _metrics(tmp_path / "padded", "step.pack=false")
    packed = _metrics(tmp_path / "packed", "step.pack=true", "step.pack_tokens=4096")  # one row: no padding
    assert len(padded) == len(packed) == 3
    for p, q in zip(padded, packed):
        assert float(p["train/real_token_fraction"]) < 0.9 and float(q["train/real_token_fraction"]) == 1.0
    # the first step's loss is the same (later ones differ: LoRA dropout draws its masks per computed token)
    assert float(packed[0]["train/loss"]) == pytest.approx(float(padded[0]["train/loss"]), rel=1e-5)
