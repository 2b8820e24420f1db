"""QLoRA (``model.quantization=nf4``): config, the reference BitsAndBytesConfig, and failing before anything loads.

CPU only: CUDA and bitsandbytes are absent here, so the paths that need them are checked up to the
``from_pretrained`` call; "CUDA + bitsandbytes present" is simulated by patching ``torch.cuda.is_available`` and
putting an empty ``bitsandbytes`` module in ``sys.modules``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import lco.models.backbone as backbone_mod
from lco.cli import CONF_DIR
from lco.config import check_config
from lco.errors import ConfigError
from lco.methods.clip import ClipStyle
from lco.methods.full import FullFineTune
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.models.quantization import bnb_config, from_pretrained_kwargs, is_quantized
from tests.conftest import compose_train

MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def qlora_ready(monkeypatch):
    """As on a CUDA machine with bitsandbytes installed (only the checks see it; nothing runs on a GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if model loading starts (resolve_path is the first step: it materialises tiny twins)."""
    calls = []
    monkeypatch.setattr(backbone_mod, "resolve_path", lambda *a, **k: calls.append(a) or pytest.fail("loading began"))
    return calls


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_defaults_to_no_quantization(tmp_path, model):
    cfg = compose_train(tmp_path, [f"model={model}"])
    assert "quantization" in cfg.model and cfg.model.quantization is None
    check_config(cfg)  # quantization is an argument of load_backbone


def test_nf4_composes_for_tiny_and_derived_model_configs(tmp_path):
    assert compose_train(tmp_path, ["model=tiny_omni", "model.quantization=nf4"]).model.quantization == "nf4"
    derived = compose_train(tmp_path, ["model=toy_omni_pretrained", "model.quantization=nf4"])
    assert derived.model.quantization == "nf4" and derived.model.path == "lco-tiny/toy_omni_pretrained"


def test_nf4_config_has_exactly_the_reference_fields():
    config = bnb_config("nf4")
    assert config.load_in_4bit is True and config.load_in_8bit is False
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.llm_int8_skip_modules is None  # transformers' default skips (lm_head) apply; towers are quantized
    assert bnb_config(None) is None


def test_from_pretrained_kwargs_pin_the_model_to_this_ranks_gpu(qlora_ready, monkeypatch):
    assert from_pretrained_kwargs(None) == {}
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    kwargs = from_pretrained_kwargs("nf4")
    assert kwargs["device_map"] == {"": 0} and kwargs["quantization_config"].bnb_4bit_quant_type == "nf4"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert from_pretrained_kwargs("nf4")["device_map"] == {"": 3}


def test_load_backbone_passes_the_quantization_config_to_from_pretrained(qlora_ready, monkeypatch):
    import transformers

    seen = {}

    class Stop(Exception):
        pass

    def spy(where, **kwargs):
        seen.update(kwargs)
        raise Stop  # bitsandbytes is not really here: stop at the call

    cls = transformers.Qwen2_5OmniThinkerForConditionalGeneration
    monkeypatch.setattr(cls, "from_pretrained", spy)
    with pytest.raises(Stop):
        load_backbone("qwen2_5_omni", "lco-tiny/tiny_omni", dtype="bfloat16", quantization="nf4")
    assert seen["quantization_config"].load_in_4bit and seen["quantization_config"].bnb_4bit_use_double_quant
    assert seen["device_map"] == {"": 0} and seen["dtype"] == torch.bfloat16


def test_nf4_without_cuda_fails_before_anything_loads(no_cuda, no_loading):
    with pytest.raises(ConfigError) as err:
        load_backbone("qwen2_5_omni", "lco-tiny/tiny_omni", quantization="nf4")
    text = str(err.value)
    assert "model.quantization=nf4" in text and "no CUDA GPU" in text
    assert "pip install bitsandbytes" in text and "model.quantization=null" in text
    assert not no_loading


def test_nf4_without_bitsandbytes_names_only_bitsandbytes(monkeypatch, no_loading):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(ConfigError) as err:
        load_backbone("qwen2_5_vl", "lco-tiny/tiny_vl", quantization="nf4")
    text = str(err.value)
    assert "bitsandbytes cannot be imported" in text and "no CUDA" not in text
    assert "model.quantization=null" in text


@pytest.mark.parametrize("value", ["int4", "NF4", "fp4"])
def test_bad_value_names_key_and_allowed_values(tmp_path, qlora_ready, no_loading, value):
    with pytest.raises(ConfigError) as err:
        load_backbone("qwen2", "lco-tiny/tiny_text", quantization=value)
    text = str(err.value)
    assert f"model.quantization={value!r}" in text and "model.quantization=null" in text and "=nf4" in text
    with pytest.raises(ConfigError, match="model.quantization"):
        check_config(compose_train(tmp_path, ["model=tiny_text", f"model.quantization={value}"]))


@pytest.mark.parametrize("method,extra,ok", [
    ("lora", [], True), ("linear_probe", [], True), ("clip", ["method.train_vision=false"], True),
    ("full", [], False), ("clip", [], False)])
def test_methods_that_train_base_weights_are_rejected_at_config_check(tmp_path, qlora_ready, method, extra, ok):
    cfg = compose_train(tmp_path, ["model=tiny_vl", "model.quantization=nf4", f"method={method}", *extra])
    if ok:
        check_config(cfg)
        return
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    text = str(err.value)
    assert f"method={method} with model.quantization=nf4" in text and "model.quantization=null" in text
    assert ("method.train_vision=false" in text) == (method == "clip")
    check_config(compose_train(tmp_path, ["model=tiny_vl", f"method={method}", *extra]))  # fine unquantized


def test_full_on_cpu_reports_method_and_environment_at_once(tmp_path, no_cuda):
    cfg = compose_train(tmp_path, ["model=tiny_text", "model.quantization=nf4", "method=full"])
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert "method=full" in str(err.value) and "no CUDA GPU" in str(err.value)


def test_train_fails_before_data_and_model_load(tmp_path, no_cuda, no_loading, monkeypatch):
    from lco.data.datamodule import TripletDataModule
    from lco.train import run

    monkeypatch.setattr(TripletDataModule, "load", lambda self: pytest.fail("data loading began"))
    with pytest.raises(ConfigError, match="model.quantization=nf4"):
        run(compose_train(tmp_path, ["model=tiny_omni", "model.quantization=nf4", "logger=none"]))


def test_pretrain_refuses_a_quantized_base(tmp_path, qlora_ready, no_loading):
    from lco.pretrain import run

    cfg = compose_train(tmp_path, ["model.quantization=nf4"], config_name="pretrain")
    with pytest.raises(ConfigError, match="lco.pretrain trains every weight"):
        run(cfg)


def test_methods_refuse_a_model_loaded_in_4bit(tiny_backbone):
    """Built in code (no config check): the flag transformers sets on a 4-bit model stops full and clip."""
    embedder = Embedder(tiny_backbone("tiny_vl"))
    assert not is_quantized(embedder.model)
    embedder.model.is_loaded_in_4bit = True
    assert is_quantized(embedder.model)
    with pytest.raises(ConfigError, match="method=full"):
        FullFineTune().apply(embedder)
    with pytest.raises(ConfigError, match="train_vision"):
        ClipStyle(r=4, alpha=8).apply(embedder)
    assert not hasattr(embedder.model, "peft_config")  # refused before any adapter was added


@pytest.mark.parametrize("value,expect", [("nf4", "no CUDA GPU"), ("int8", "'int8' is not supported")])
def test_cli_prints_one_error_paragraph_and_exits_2(tmp_path, value, expect):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lco.train", "model=tiny_omni", f"model.quantization={value}",
                           f"paths.log_dir={tmp_path}", "logger=none"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lco: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "model.quantization" in proc.stderr and expect in proc.stderr
