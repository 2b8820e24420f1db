"""The GPU benchmark script, dry-run on CPU: same code path, correct FLOP count, GradCache loss = plain loss."""

import json

import pytest
import torch
import transformers

from lco.bench.gpu import run, scenario
from lco.bench.shapes import SIZES, model_config, model_flops_per_token
from lco.errors import ConfigError
from tests.conftest import compose_train

DRY = ["size=dry_run", "seq_len=12", "per_device_batch=3", "global_batch=6", "steps=2", "warmup=1"]


def test_published_3b_shapes_and_flops():
    config = model_config("omni_3b")
    text = config.get_text_config()
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (2048, 11008, 36)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (16, 2, 151936)
    assert config.vision_config.depth == 32 and config.audio_config.encoder_layers == 32
    # by hand: per layer q,o 2048x2048, k,v 2048x256, MLP 3 x 2048x11008
    n = 36 * (2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 11008)
    assert n == pytest.approx(2.77e9, rel=0.01)  # the 3B's decoder without its 311M-parameter embedding
    assert model_flops_per_token(text, 128) == 4 * n + 12 * 36 * 16 * 128 * 128  # attention: fwd 4, bwd 8
    assert isinstance(model_config("omni_7b"), transformers.Qwen2_5OmniThinkerConfig)
    assert set(SIZES) == {"omni_3b", "omni_7b", "qwen3_vl_8b", "qwen3_omni_30b_a3b"}


@pytest.mark.parametrize("size,total,decoder", [("qwen3_vl_8b", 8.77e9, 6.95e9),
                                                ("qwen3_omni_30b_a3b", 31.7e9, 2.74e9)])
def test_published_qwen3_shapes_and_active_flops(size, total, decoder):
    """The bench's Qwen3 models, built on the meta device (no memory): Qwen3-VL-8B-Instruct has 8.77B parameters;
    Qwen3-Omni-30B-A3B's thinker ~31.7B, of which a token's decoder matmuls use ~2.7B (8 of 128 experts)."""
    config = model_config(size)
    cls = transformers.Qwen3VLForConditionalGeneration if size == "qwen3_vl_8b" else \
        transformers.Qwen3OmniMoeThinkerForConditionalGeneration
    with torch.device("meta"):
        model = cls._from_config(config)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(total, rel=0.02)
    text = config.get_text_config()
    attention = 2 * (text.num_attention_heads + text.num_key_value_heads) * 128 * text.hidden_size
    if size == "qwen3_vl_8b":  # by hand, per layer: attention with head_dim 128, MLP 3 x 4096 x 12288
        n = 36 * (attention + 3 * 4096 * 12288)
    else:  # attention, 8 routed experts of 3 x 2048 x 768, the 2048 x 128 router
        n = 48 * (attention + 8 * 3 * 2048 * 768 + 2048 * 128)
    assert n == pytest.approx(decoder, rel=0.01)
    assert model_flops_per_token(text, 64) == 4 * n + 12 * text.num_hidden_layers * text.num_attention_heads * 128 * 64


def test_dry_run_gradcache_step_equals_plain_step(tmp_path):
    cfg = compose_train(tmp_path, DRY + ["method.dropout=0"], config_name="bench_gpu")
    plain = scenario(cfg, torch.device("cpu"), 6, None)
    cached = scenario(cfg, torch.device("cpu"), 6, 3)
    assert plain["losses"][0] == pytest.approx(cached["losses"][0], abs=1e-5)
    assert plain["losses"][1] == pytest.approx(cached["losses"][1], abs=1e-4)  # after one identical AdamW step
    assert plain["trainable"] == cached["trainable"] > 0 and plain["dtype"] == "float32"


def test_dry_run_writes_results(tmp_path):
    """Padded and packed scenarios in one run on All-NLI-shaped prompts: real tokens are counted apart from
    padding, packing computes fewer tokens for the same triplets, and the report says so."""
    result = run(compose_train(tmp_path, DRY + [f"output_dir={tmp_path}"], config_name="bench_gpu"))
    saved = json.loads((tmp_path / "gpu_results.json").read_text())
    assert [(r["batch"], r["chunk"], r["packed"]) for r in saved["scenarios"]] == [
        (3, None, False), (6, 9, False), (3, None, True), (6, 9, True)]  # chunk: 3 sides x 3 triplets
    assert saved["scenarios"][0]["real_fraction"] < 0.9 < saved["scenarios"][2]["real_fraction"] <= 1.0
    padded, packed = saved["scenarios"][1], saved["scenarios"][3]  # GradCache: sorted, filled chunks pad less
    assert padded["real_fraction"] < packed["real_fraction"] <= 1.0
    assert padded["paper_gpu_hours"] == pytest.approx(552000 / padded["triplets_per_s"] / 3600)
    assert set(saved["packing_speedup"]) == {"3", "6"} and saved["lengths"] == "allnli"
    assert saved["packing_speedup"]["6"] == packed["triplets_per_s"] / padded["triplets_per_s"]
    assert padded["losses"][0] == pytest.approx(packed["losses"][0], rel=1e-5)  # same first batch, same loss
    assert result["peak_tflops"] is None and packed["mfu"] is None  # no MFU without a known device peak
    assert "| 6 | 9 | yes | no |" in (tmp_path / "gpu_results.md").read_text() and saved["prefix_speedup"] == {}


def test_dry_run_times_a_shared_prefix(tmp_path):
    """``share_prefix=[false,true]``: each packed scenario again with the chat template's opening computed once per
    pass or chunk; the same first loss, fewer computed tokens, and the speedup reported per batch and layout."""
    result = run(compose_train(tmp_path, DRY + ["pack=[true]", "share_prefix=[false,true]", f"output_dir={tmp_path}"],
                               config_name="bench_gpu"))
    rows = result["scenarios"]
    assert [(r["batch"], r["packed"], r["shared_prefix"]) for r in rows] == [
        (3, True, False), (6, True, False), (3, True, True), (6, True, True)]
    for plain, shared in ((rows[0], rows[2]), (rows[1], rows[3])):
        assert shared["losses"][0] == pytest.approx(plain["losses"][0], rel=1e-5)
        assert shared["real_fraction"] <= 1.0 and shared["real_tokens_per_s"] > 0
    assert set(result["prefix_speedup"]) == {"3 packed", "6 packed"} and result["packing_speedup"] == {}
    assert result["prefix_speedup"]["6 packed"] == rows[3]["triplets_per_s"] / rows[1]["triplets_per_s"]
    assert "Shared prefix / not triplets/s: **" in (tmp_path / "gpu_results.md").read_text()


def test_dry_run_of_the_qwen3_omni_thinker(tmp_path):
    """The Qwen3-Omni shape's code path (MoE decoder, Qwen3 template: a 3-token shared prefix) on its tiny twin."""
    overrides = ["size=dry_run_qwen3_omni", *DRY[1:], "pack=[true]", "share_prefix=[false,true]", "global_batch=null",
                 "method.dropout=0", f"output_dir={tmp_path}"]
    plain, shared = run(compose_train(tmp_path, overrides, config_name="bench_gpu"))["scenarios"]
    assert shared["losses"][0] == pytest.approx(plain["losses"][0], rel=1e-5) and plain["trainable"] > 0
    assert "(family `qwen3_omni`)" in (tmp_path / "gpu_results.md").read_text()


def test_uniform_lengths_count_every_token(tmp_path):
    result = run(compose_train(tmp_path, DRY + ["lengths=uniform", "pack=[false]", f"output_dir={tmp_path}"],
                               config_name="bench_gpu"))
    small, large = result["scenarios"]
    assert small["real_fraction"] == large["real_fraction"] == 1.0 and result["packing_speedup"] == {}
    assert large["real_tokens_per_s"] == pytest.approx(3 * 6 * 12 * large["triplets_per_s"] / 6)


def test_bad_settings_fail_before_building(tmp_path):
    with pytest.raises(ConfigError, match="multiple of per_device_batch"):
        run(compose_train(tmp_path, DRY[:2] + ["per_device_batch=4", "global_batch=6"], config_name="bench_gpu"))
    with pytest.raises(ConfigError, match="must exceed warmup"):
        run(compose_train(tmp_path, DRY[:2] + ["steps=2", "warmup=2"], config_name="bench_gpu"))
    with pytest.raises(ConfigError, match="lengths='nli': use allnli"):
        run(compose_train(tmp_path, DRY + ["lengths=nli"], config_name="bench_gpu"))
    with pytest.raises(ConfigError, match=r"pack=\['yes'\]: give a list of true/false"):
        run(compose_train(tmp_path, DRY + ["pack=[yes]"], config_name="bench_gpu"))
    if torch.cuda.is_available():
        return
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        run(compose_train(tmp_path, ["size=omni_3b"], config_name="bench_gpu"))


def test_nf4_path_reloads_the_same_model_and_skips_global(tmp_path, monkeypatch):
    """quantization=nf4 saves the random model as an HF folder and reloads it through load_backbone (the users'
    QLoRA path). bitsandbytes needs CUDA, so here the quantizer is switched off: the reloaded model must then give
    the directly built model's loss, and global_batch=null times the per-device scenario alone."""
    import lco.models.backbone as backbone

    args = DRY + ["method.dropout=0", "global_batch=null", "pack=[false]", f"output_dir={tmp_path}"]
    direct = run(compose_train(tmp_path, args, config_name="bench_gpu"))
    with pytest.raises(ConfigError, match="quantization=nf4 loads the base in 4-bit"):
        run(compose_train(tmp_path, args + ["quantization=nf4"], config_name="bench_gpu"))
    monkeypatch.setattr("lco.models.quantization.environment_problem", lambda value: None)
    monkeypatch.setattr(backbone, "from_pretrained_kwargs", lambda value: {})
    reloaded = run(compose_train(tmp_path, args + ["quantization=nf4"], config_name="bench_gpu"))
    assert len(direct["scenarios"]) == len(reloaded["scenarios"]) == 1 and reloaded["quantization"] == "nf4"
    assert reloaded["scenarios"][0]["losses"] == pytest.approx(direct["scenarios"][0]["losses"], abs=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # the saved folder is removed
    with pytest.raises(ConfigError, match="quantization='int8' is not supported"):
        run(compose_train(tmp_path, args + ["quantization=int8"], config_name="bench_gpu"))
