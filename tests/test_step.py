"""``lco/step/``: plans (fused passes, chunks, media slices), GradCache, and the step that uses them give the same
embeddings, losses and gradients as the plain path.

The module has the step plan each batch on the host (``on_before_batch_transfer``), then embeds it; every
comparison runs the real ``ContrastiveModule`` on the tiny Omni twin with text, image, audio and video items in
one batch.
"""

import random
from functools import partial

import pytest
import torch

from lco.checkpointing import AtomicCheckpointIO
from lco.data.collate import TripletCollator
from lco.errors import BatchLayoutError, ConfigError
from lco.losses import InfoNCE
from lco.methods.clip import ClipStyle
from lco.methods.lora import LoRA
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.module import ContrastiveModule
from lco.step import Step, gradcache
from lco.step.gradcache import cached_embed
from lco.step.plan import fuse, plan_chunks, row_ranges, take
from lco.train import _strategy
from tests.conftest import compose_train
from tests.media_fixtures import SCENES, caption, write_media


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return root, write_media(root)


def _records(media) -> list[dict]:
    root, files = media
    anchors = [{"text": caption(SCENES[0])}, {"text": "", "image": str(root / files["image"][1])},
               {"text": "", "audio": str(root / files["audio"][2])}, {"text": "x", "video": str(root / files["video"][3])}]
    return [{"anchor": a, "positive": {"text": caption(SCENES[i])},
             "negatives": [{"text": caption(SCENES[(i + 1) % 4]) + " seen from far away"}]} for i, a in enumerate(anchors)]


def _module(chunk=None, fuse_max_padding=None, dropout=0.0):
    torch.manual_seed(0)
    embedder = Embedder(load_backbone("qwen2_5_omni", "lco-tiny/tiny_omni"))
    return ContrastiveModule(embedder, LoRA(r=4, alpha=8, dropout=dropout), InfoNCE(), Step(fuse_max_padding, chunk),
                             partial(torch.optim.SGD, lr=0.1), gradient_checkpointing=False, max_nonfinite_skips=0)


def _loss_and_grads(module, records, seed=1):
    batch = module.on_before_batch_transfer(TripletCollator(module.embedder.preprocessor)(records), 0)
    torch.manual_seed(seed)
    loss = module.batch_loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
    return loss.detach(), grads, batch


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_plan_fuses_text_sides_and_chunks_media_per_item(media):
    _, _, batch = _loss_and_grads(_module(chunk=3, fuse_max_padding=1.25), _records(media))
    anchor, fused = batch["passes"]
    assert anchor["sides"] == [0] and sorted(fused["sides"]) == [1, 2]  # media side alone; text sides fused
    assert fused["inputs"]["input_ids"].shape[0] == 8 and [c["rows"] for c in fused["chunks"]] == [(0, 3), (3, 6), (6, 8)]
    lengths = fused["inputs"]["attention_mask"].sum(1)
    assert (lengths[:-1] >= lengths[1:]).all() and anchor["restore"] is None  # text sorted longest first
    assert [c["first_col"] for c in fused["chunks"]] == [int(fused["inputs"]["input_ids"].shape[1] - lengths[i])
                                                          for i in (0, 3, 6)]  # each chunk keeps only its width
    first, second = anchor["chunks"]  # rows 0-2 hold text, image, audio; row 3 the video
    assert first["media"]["pixel_values"] == (0, anchor["inputs"]["pixel_values"].shape[0])
    assert first["media"]["input_features"] == (0, 1) and first["media"]["pixel_values_videos"] == (0, 0)
    assert second["media"]["pixel_values_videos"] == (0, anchor["inputs"]["pixel_values_videos"].shape[0])
    assert "pixel_values" not in take(anchor["inputs"], second) and "input_features" not in take(anchor["inputs"], second)


def test_fused_and_chunked_embeddings_equal_separate_passes(media):
    module = _module()
    module.eval()
    collated = TripletCollator(module.embedder.preprocessor)(_records(media))
    with torch.no_grad():
        separate = torch.cat([module.embedder(collated[side]) for side in ("anchor", "positive", "negative")])
        for chunk, fuse_max_padding in [(None, 10.0), (1, None), (3, 10.0)]:
            module.step = Step(fuse_max_padding, chunk)
            batch = module.on_before_batch_transfer(dict(collated), 0)
            assert len(batch["passes"]) == (2 if fuse_max_padding else 3)
            together = torch.cat(module.step.embed(module.embedder, batch))
            assert torch.allclose(together, separate, atol=1e-5), (chunk, fuse_max_padding)


def test_filled_chunks_never_outgrow_the_footprint_of_size_longest_rows():
    """fill: as many rows per chunk as fit rows x longest <= the largest fixed chunk's; in order, all rows once."""
    lengths = [50, 48, 30, 30, 29, 12, 12, 11, 11, 10, 10, 10, 9, 9, 8, 3]  # sorted longest first
    assert row_ranges(lengths, 4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert row_ranges(lengths, 4, fill=True) == [(0, 4), (4, 10), (10, 16)]  # 4x50=200; 6x29=174; 6x10=60
    rng = random.Random(0)
    for trial in range(200):
        lengths = [rng.randint(1, 80) for _ in range(rng.randint(1, 40))]
        if trial % 2:
            lengths.sort(reverse=True)
        size = rng.randint(1, 9)
        fixed, filled = row_ranges(lengths, size), row_ranges(lengths, size, fill=True)
        budget = max((b - a) * max(lengths[a:b]) for a, b in fixed)
        assert [a for a, _ in filled] == [0] + [b for _, b in filled[:-1]] and filled[-1][1] == len(lengths)
        assert all((b - a) * max(lengths[a:b]) <= budget for a, b in filled) and len(filled) <= len(fixed)
        if trial % 2:
            assert filled[0] == fixed[0]  # sorted: the longest rows set the budget and come first


def test_cached_step_fills_chunks_with_short_items_and_keeps_gradients():
    """Long anchors, short positives/negatives: under GradCache the text sides share one sorted pass whose later
    chunks hold more (short) rows; loss and gradients equal the uncached path's."""
    long = " ".join(["The background is plain grey and nothing else is in the frame."] * 4)
    records = [{"anchor": {"text": caption(SCENES[i % 4]) + " " + long * (1 + i % 2)},
                "positive": {"text": caption(SCENES[i % 4])},
                "negatives": [{"text": caption(SCENES[(i + 1) % 4])}]} for i in range(8)]
    loss0, plain, _ = _loss_and_grads(_module(fuse_max_padding=1.25), records)
    loss, cached, batch = _loss_and_grads(_module(chunk=2, fuse_max_padding=1.25), records)
    (only,) = batch["passes"]
    assert sorted(only["sides"]) == [0, 1, 2] and only["inputs"]["input_ids"].shape[0] == 24
    rows = [c["rows"][1] - c["rows"][0] for c in only["chunks"]]
    lengths = only["inputs"]["attention_mask"].sum(1).tolist()
    assert rows[0] == 2 and max(rows) >= 6 and len(rows) < 12  # fixed chunks of 2 would be 12 passes
    assert all((b - a) * max(lengths[a:b]) <= 2 * lengths[0] for a, b in (c["rows"] for c in only["chunks"]))
    assert torch.allclose(loss, loss0, atol=1e-6)
    assert _max_diff(cached, plain) < 1e-5 * max(float(g.abs().max()) for g in plain.values())
    three = _module(chunk=2, fuse_max_padding=None).on_before_batch_transfer(
        TripletCollator(_module().embedder.preprocessor)(records), 0)
    assert len(three["passes"]) == 3  # fuse_max_padding=null keeps the reference's three passes


def test_fuse_keeps_sides_apart_when_padding_would_cost_too_much():
    short = {"input_ids": torch.ones(4, 5, dtype=torch.long), "attention_mask": torch.ones(4, 5, dtype=torch.long)}
    long = {"input_ids": torch.ones(4, 20, dtype=torch.long), "attention_mask": torch.ones(4, 20, dtype=torch.long)}
    groups = fuse([short, long, dict(short)], pad_id=0, max_padding=1.25)
    assert [members for _, members in groups] == [[0, 2], [1]]  # 2x5 tokens join; padding 5 -> 20 would not
    joined = groups[0][0]
    assert joined["input_ids"].shape == (8, 5)
    assert [m for _, m in fuse([short, long], pad_id=0, max_padding=None)] == [[0], [1]]
    padded = fuse([short, long], pad_id=7, max_padding=100.0)[0][0]
    assert padded["input_ids"].shape == (8, 20) and (padded["input_ids"][:4, :15] == 7).all()
    assert padded["attention_mask"][:4, :15].sum() == 0 and padded["attention_mask"][:4, 15:].all()


def test_gradcache_gradients_equal_the_plain_path(media):
    records = _records(media)
    loss0, plain, _ = _loss_and_grads(_module(), records)
    for chunk in (1, 3):
        loss, cached, _ = _loss_and_grads(_module(chunk=chunk, fuse_max_padding=1.25), records)
        assert torch.allclose(loss, loss0, atol=1e-6)
        assert _max_diff(cached, plain) < 1e-5 * max(float(g.abs().max()) for g in plain.values())
    assert any(float(g.abs().max()) > 0 for n, g in plain.items() if "lora_B" in n)


def _chunked_with_graphs(module, records, seed=1):
    """The uncached reference for dropout: the same chunks in the same order, graphs kept."""
    batch = module.on_before_batch_transfer(TripletCollator(module.embedder.preprocessor)(records), 0)
    torch.manual_seed(seed)
    out = [None] * 3
    for step in batch["passes"]:
        vectors = torch.cat([module.embedder(take(step["inputs"], c)) for c in step["chunks"]])
        vectors = vectors if step["restore"] is None else vectors[step["restore"]]
        for side, part in zip(step["sides"], vectors.split(step["sizes"])):
            out[side] = part
    module.loss_fn(*out).backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}


def test_gradcache_replays_dropout_masks(media, monkeypatch):
    records = _records(media)
    reference = _chunked_with_graphs(_module(chunk=3, dropout=0.3), records)
    _, cached, _ = _loss_and_grads(_module(chunk=3, dropout=0.3), records)
    scale = max(float(g.abs().max()) for g in reference.values())
    assert _max_diff(cached, reference) < 1e-6 * scale
    monkeypatch.setattr(gradcache.RngState, "restore", lambda self: None)  # replay with fresh dropout masks
    _, wrong, _ = _loss_and_grads(_module(chunk=3, dropout=0.3), records)
    assert _max_diff(wrong, reference) > 1e-3 * scale  # the check above would catch a replay bug


def test_gradcache_leaves_the_random_stream_where_the_plain_path_would():
    embed = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Dropout(0.5))
    batch = {"input_ids": torch.arange(6).view(3, 2) % 10, "attention_mask": torch.ones(3, 2, dtype=torch.long)}

    def run(chunks):
        torch.manual_seed(0)
        out = cached_embed(lambda b: embed(b["input_ids"]).mean(1), batch, chunks, list(embed.parameters()))
        out.sum().backward()
        return torch.rand(1)

    chunks = plan_chunks(batch, 2)
    after = run(chunks)
    torch.manual_seed(0)
    for chunk in chunks:
        embed(take(batch, chunk)["input_ids"])
    assert torch.equal(after, torch.rand(1))


def test_unknown_batch_tensor_cannot_be_chunked():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "rope_deltas": torch.ones(2)}
    with pytest.raises(BatchLayoutError, match="rope_deltas.*step.cache_chunk=null"):
        plan_chunks(batch, 1)


def test_cache_chunk_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="step.cache_chunk=0 is not valid: GradCache items per chunk must be an integer >= 1"):
        Step(cache_chunk=0)
    cfg = compose_train(tmp_path, ["trainer=fsdp", "step.cache_chunk=8"])
    with pytest.raises(ConfigError, match="not with FSDP"):
        _strategy(cfg, LoRA(), Step(cache_chunk=8))
    plain = _strategy(compose_train(tmp_path, ["trainer=ddp_cpu", "step.cache_chunk=8"]), LoRA(), Step(cache_chunk=8))
    assert set(plain) == {"plugins"} and isinstance(plain["plugins"][0], AtomicCheckpointIO)  # strategy unchanged
    with pytest.raises(ConfigError, match="not with DeepSpeed"):  # Lightning's strategy names too
        _strategy(compose_train(tmp_path, ["+trainer.strategy=deepspeed_stage_2"]), LoRA(), Step(cache_chunk=8))
    clip = ClipStyle(train_vision=True)
    assert _strategy(compose_train(tmp_path, ["+trainer.strategy=ddp"]), clip, Step())["strategy"] == \
        "ddp_find_unused_parameters_true"
    assert _strategy(compose_train(tmp_path, ["trainer=ddp_cpu"]), clip, Step())["strategy"]._ddp_kwargs[
        "find_unused_parameters"] is True
