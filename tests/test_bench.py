"""make bench, part (a): both timed paths do the same work, and the results files say what was measured."""

import json

import pytest
import torch

from lco.bench.__main__ import run
from lco.bench.loop import Paired, PlainLoop, build, lco_loop, make_batches, plain_loop
from tests.conftest import compose_train


def _cfg(tmp_path, extra=()):
    return compose_train(tmp_path / "run", ["parts=[a]", "model=tiny_text", "steps=4", "warmup=1", "rounds=1",
                                            "batch_size=8", f"output_dir={tmp_path}", *extra], config_name="bench")


def test_plain_loop_and_lco_reach_the_same_weights(tmp_path):
    cfg = _cfg(tmp_path, ["method.dropout=0"])
    plain_embedder, method, loss, step = build(cfg)
    batches = make_batches(cfg, plain_embedder)
    assert len(batches) == 4 and batches[0]["anchor"]["input_ids"].shape[0] == 8
    plain_loop(plain_embedder, method, loss, step, batches, cfg, torch.device("cpu"))
    lco_embedder, method, loss, step = build(cfg)
    times = lco_loop(lco_embedder, method, loss, step, batches, cfg, "cpu")
    assert len(times) == 4 and all(t > 0 for t in times)
    trained = {n: p for n, p in plain_embedder.model.named_parameters() if p.requires_grad}
    other = dict(lco_embedder.model.named_parameters())
    assert trained and all("lora_" in n for n in trained)
    for name, param in trained.items():
        assert torch.allclose(param, other[name], atol=1e-6), name
    assert any(float(p.abs().max()) > 0 for n, p in trained.items() if "lora_B" in n)


def test_paired_steps_leave_both_paths_as_they_run_alone(tmp_path):
    """Part (a) times the paths step by step in one process; with dropout on, each keeps its own random stream,
    so both end exactly where they end when run alone: the paired timing changes nothing they compute."""
    cfg = _cfg(tmp_path)
    assert cfg.method.dropout > 0
    cpu = torch.device("cpu")

    def lora(embedder):
        return {n: p.detach() for n, p in embedder.model.named_parameters() if p.requires_grad}

    plain_alone, method, loss, step = build(cfg)
    batches = make_batches(cfg, plain_alone)
    plain_loop(plain_alone, method, loss, step, batches, cfg, cpu)
    lco_alone, method, loss, step = build(cfg)
    lco_loop(lco_alone, method, loss, step, batches, cfg, "cpu")
    plain_paired, method, loss, step = build(cfg)
    paired = Paired(PlainLoop(plain_paired, method, loss, step, len(batches), cfg, cpu), batches)
    lco_paired, method, loss, step = build(cfg)
    assert lco_loop(lco_paired, method, loss, step, batches, cfg, "cpu", paired) == paired.times
    assert len(paired.plain_times) == len(paired.lco_times) == 4 and min(paired.lco_times + paired.plain_times) > 0
    for alone, together in [(plain_alone, plain_paired), (lco_alone, lco_paired)]:
        expected, got = lora(alone), lora(together)
        assert expected.keys() == got.keys() and all(torch.equal(expected[n], got[n]) for n in expected)
    assert all(any(float(p.abs().max()) > 0 for n, p in lora(e).items() if "lora_B" in n)  # B starts at zero
               for e in (plain_alone, lco_alone))


def test_bench_writes_results(tmp_path):
    result = run(_cfg(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    round0 = saved["parts"]["a"]["rounds"][0]
    assert round0["ratio"] == round0["lco_s"] / round0["plain_s"] and saved["parts"]["a"]["ratio_median"] == round0["ratio"]
    assert result["model"] == "lco-tiny/tiny_text" and saved["parts"]["a"]["steps"] == 4
    text = (tmp_path / "results.md").read_text()
    assert "## (a) lco's training step vs a hand-written PyTorch loop" in text and f"{round0['ratio']:.3f}" in text


def test_memory_points_show_gradcache_keeps_the_step_flat(tmp_path):
    """Part (c) at toy sizes: each point in its own process; the cached step's memory barely grows with the
    batch while the uncached one grows with it, and both compute the same loss."""
    from lco.bench.memory import part_c

    cfg = _cfg(tmp_path, ["memory.batches=[8,128]", "memory.chunk=8", "memory.max_uncached=128"])
    result, lines = part_c(cfg, torch.device("cpu"))
    points = {(p["batch"], p["chunk"]): p for p in result["points"]}
    assert set(points) == {(8, None), (128, None), (8, 8), (128, 8)}
    assert points[(128, None)]["loss"] == pytest.approx(points[(128, 8)]["loss"], abs=1e-5)
    assert points[(128, None)]["tokens"] == points[(128, 8)]["tokens"] > 10 * points[(8, 8)]["tokens"]
    assert points[(128, None)]["step_mib"] > 2 * points[(128, 8)]["step_mib"]
    assert result["cached_ratio"] == points[(128, 8)]["step_mib"] / points[(8, 8)]["step_mib"]
    assert any("GradCache step memory at 128 vs 8" in line for line in lines)
