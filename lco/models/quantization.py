"""QLoRA as the reference script does it: ``model.quantization=nf4`` loads the frozen base in 4-bit NF4.

In: the ``model.quantization`` value: ``None`` (default, no quantization) or ``"nf4"``; for ``config_problems``
the composed Hydra config (``model`` and, for training, ``method``).
Out: ``from_pretrained_kwargs`` gives the extra ``from_pretrained`` keyword arguments (``quantization_config``, a
transformers ``BitsAndBytesConfig`` with NF4, double quantisation and bf16 compute, plus a ``device_map`` that
puts the whole model on this process's GPU); ``config_problems`` gives what cannot work as sentences, for
``lco.config.check_config``. Either raises / reports before any weight loads; the errors are ``ConfigError`` (one
``lco: error:`` paragraph on the command line). ``int8`` is not offered: the reference uses NF4 only.

Decisions:
- Towers: the whole model is quantized, as in the reference: every ``nn.Linear`` except transformers' default
  skips (``lm_head``, which lco never runs). The vision/audio towers are frozen, text-only training never runs
  them, and they save ~1.9 GB in 4-bit on Omni-7B. At inference ``load_embedder`` loads the base unquantized
  (the card has no quantization), so the saved adapter is applied on full-precision towers and decoder, as is
  usual for QLoRA adapters. Keeping towers in bf16 would need ``llm_int8_skip_modules`` (which then must list
  ``lm_head`` too, because giving it drops transformers' default skips).
- peft's ``prepare_model_for_kbit_training`` is not called. Its input-grad hook is only for reentrant
  checkpointing, and lco checkpoints non-reentrantly (``ContrastiveModule.setup``), so gradients reach the LoRA
  weights without it. Its other step casts every non-4-bit weight (token embeddings, ``lm_head``, norms, tower
  convs) to fp32: ~2 GB more on Omni-7B for frozen weights, while lco's unquantized bf16 path keeps bf16 norms
  too. It would also switch checkpointing on regardless of ``gradient_checkpointing``. LoRA weights are fp32
  anyway (peft creates them in fp32 beside 4-bit layers).
- Methods: ``lora`` (QLoRA) and ``linear_probe`` (fp32 head on a frozen base) work. A method whose
  ``trains_base_weights`` is true cannot: ``full`` (trains the decoder's own weights) and ``clip`` with
  ``train_vision=true`` (trains the vision tower, which is 4-bit). ``clip`` with ``train_vision=false`` is LoRA
  and works. ``lco.pretrain`` trains every weight and refuses a quantized base too.
"""

from __future__ import annotations

import importlib
import os

import torch

from lco.errors import ConfigError

QUANTIZATIONS = ("nf4",)
KEY = "model.quantization"


def invalid_value(value) -> str | None:
    """The sentence explaining why ``value`` is not a valid ``model.quantization``, or None if it is."""
    if value is None or value in QUANTIZATIONS:
        return None
    return (f"{KEY}={value!r} is not supported: use {KEY}=null (the default: load the base unquantized) or "
            f"{KEY}=nf4 (QLoRA: the frozen base in 4-bit NF4 with double quantisation and bf16 compute, "
            "which needs a CUDA GPU and bitsandbytes).")


def environment_problem(value) -> str | None:
    """Why ``value`` cannot load on this machine (no CUDA, bitsandbytes not importable), or None."""
    if value is None:
        return None
    missing = []
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    try:
        importlib.import_module("bitsandbytes")
    except Exception as err:  # noqa: BLE001 - ImportError, or a broken CUDA install inside bitsandbytes
        missing.append(f"bitsandbytes cannot be imported ({type(err).__name__}: {err})")
    if not missing:
        return None
    return (f"{KEY}={value} loads the base in 4-bit with bitsandbytes, which needs a CUDA GPU and the bitsandbytes "
            f"package, but here {' and '.join(missing)}. Run on a CUDA GPU with bitsandbytes installed "
            "(`pip install bitsandbytes`, or `pip install 'lco[qlora]'`), or set model.quantization=null to load "
            "the base unquantized.")


def bnb_config(value):
    """The transformers ``BitsAndBytesConfig`` for ``value`` (None for None); no environment check."""
    if (problem := invalid_value(value)) is not None:
        raise ConfigError(problem)
    if value is None:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def from_pretrained_kwargs(value) -> dict:
    """Extra ``from_pretrained`` kwargs for ``value``; raises ``ConfigError`` first if it cannot work here.

    The model goes whole onto this process's GPU (``LOCAL_RANK``, set by torchrun and Lightning's DDP launcher):
    without a ``device_map`` transformers would put every rank's copy on the current device, GPU 0.
    """
    config = bnb_config(value)
    if config is None:
        return {}
    if (problem := environment_problem(value)) is not None:
        raise ConfigError(problem)
    return {"quantization_config": config, "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}


def is_quantized(model) -> bool:
    """True for a model loaded with a quantization config (also through a peft wrapper)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(model, "hf_quantizer", None) is not None)


def reject_quantized(model, what: str) -> None:
    """Raise ``ConfigError`` if ``model`` is quantized: ``what`` (e.g. "method=full") would train 4-bit weights."""
    if is_quantized(model):
        raise ConfigError(f"{what} trains weights of the backbone itself, but this backbone was loaded in 4 bits "
                          f"({KEY}=nf4), which cannot be trained. Use method=lora (QLoRA) or method=linear_probe, "
                          f"or set {KEY}=null.")


def _method_problem(method_cfg, value) -> str | None:
    from hydra.utils import instantiate

    try:
        method = instantiate(method_cfg)
    except Exception:  # noqa: BLE001 - a bad method config is reported by check_config's key walk
        return None
    if not getattr(method, "trains_base_weights", False):
        return None
    if getattr(method, "trains_tower", False):
        what, fix = "method.train_vision=true trains the vision tower", "set method.train_vision=false (LoRA only), "
    else:
        what, fix = "it trains the decoder's own weights", ""
    return (f"method={method.name} with {KEY}={value}: {what}, and {value} stores those in 4 bits, which cannot "
            f"be trained. Use method=lora (QLoRA) or method=linear_probe, {fix}or set {KEY}=null.")


def config_problems(cfg) -> list[str]:
    """What cannot work in ``cfg``'s ``model.quantization`` (bad value, no CUDA/bitsandbytes, a method that
    trains base weights), as sentences; empty when it is null or fine. Loads nothing."""
    model = cfg.get("model") if hasattr(cfg, "get") else None
    if model is None or not hasattr(model, "get"):
        return []
    try:
        value = model.get("quantization")
    except Exception:  # noqa: BLE001 - an unresolvable value is reported by check_config already
        return []
    if value is None:
        return []
    if (problem := invalid_value(value)) is not None:
        return [problem]
    problems = []
    if cfg.get("method") is not None and (problem := _method_problem(cfg.method, value)) is not None:
        problems.append(problem)
    if (problem := environment_problem(value)) is not None:
        problems.append(problem)
    return problems
