"""LoRA on the language decoder only (the paper's method).

Targets are matched by a regex anchored on the family's decoder path (``model.language_model.layers.N...``),
so same-named projections inside the vision tower (``mlp.gate_proj``...) or audio tower never get adapters.
Towers, projectors, embeddings and norms stay frozen. ``save`` writes a standard peft adapter folder.
On a 4-bit base (``model.quantization=nf4``, QLoRA) peft wraps the bitsandbytes layers itself; peft's
``prepare_model_for_kbit_training`` is deliberately not called (why: ``lco/models/quantization.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from lco.errors import ConfigError
from lco.methods.base import Method

REFERENCE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRA(Method):
    name = "lora"

    def __init__(self, r: int = 64, alpha: int = 128, dropout: float = 0.05,
                 targets: tuple[str, ...] | list[str] = REFERENCE_TARGETS, layers: list[int] | None = None):
        if r <= 0:
            raise ConfigError(f"method.r must be a positive integer, got {r}")
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.targets = tuple(targets)
        self.layers = layers
        self.modules_to_save: list[str] | None = None  # whole modules trained and saved beside the adapter

    def target_regex(self, lm_prefix: str) -> str:
        layer = r"\d+" if self.layers is None else "|".join(str(i) for i in self.layers)
        return rf"{re.escape(lm_prefix)}\.layers\.({layer})\.(self_attn|mlp)\.({'|'.join(self.targets)})"

    def apply(self, embedder) -> None:
        embedder.model.requires_grad_(False)
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias="none",
                            target_modules=self.target_regex(embedder.family.lm_prefix),
                            modules_to_save=self.modules_to_save)
        try:
            embedder.model = get_peft_model(embedder.model, config)
        except ValueError as err:
            raise ConfigError(f"method=lora matched no module for targets {self.targets} under "
                             f"{embedder.family.lm_prefix}.layers ({err}); check method.targets / method.layers.") from err
        skip_upcast_under_autocast(embedder.model)

    @classmethod
    def load(cls, embedder, folder: str | Path) -> None:
        if not (Path(folder) / "adapter_model.safetensors").is_file():  # never a pickled adapter_model.bin
            raise FileNotFoundError(f"{folder}: no adapter_model.safetensors. lco loads adapters from safetensors "
                                    "only (a pickled .bin can run code); re-save the adapter with peft's "
                                    "save_pretrained(safe_serialization=True).")
        embedder.model = PeftModel.from_pretrained(embedder.model, str(folder))
        skip_upcast_under_autocast(embedder.model)


def _cast_only_without_autocast(layer: LoraLayer, args: tuple, kwargs: dict) -> None:
    x = args[0] if args else next(iter(kwargs.values()))
    layer.cast_input_dtype_enabled = not torch.is_autocast_enabled(x.device.type)


def skip_upcast_under_autocast(model: torch.nn.Module) -> int:
    """Stop peft from copying a bf16/fp16 layer input to fp32 (its adapter weights' dtype) under autocast.

    peft keeps adapters in fp32 beside a bf16 base and casts each LoRA layer's input to fp32; the dropout then
    runs in fp32 and autocast casts the result back to bf16 for the adapter matmul. Under autocast that round
    trip changes no value (bf16 -> fp32 is exact; autocast runs the matmul in bf16 either way) but costs a copy
    and an fp32 dropout per layer: on an H100, Qwen2.5-Omni-3B, 33 triplets x 128 tokens, the copies took 120 ms
    and the dropouts 75 ms of a 1.04 s step, 0.83 s with this hook (``experiments/bench/gpu_h100.md``). A forward
    pre-hook turns the cast off while autocast is on (training under ``bf16-mixed``, GradCache replays and
    checkpoint recomputes, which restore autocast) and back on otherwise (a plain bf16 forward needs it). Only
    layers whose base weight dtype differs from their adapter's get the hook (none on an fp32 CPU run).
    Returns how many got one.
    """
    hooked = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        adapter = next(module.lora_A.parameters(), None)
        if adapter is not None and module.get_base_layer().weight.dtype != adapter.dtype:
            module.register_forward_pre_hook(_cast_only_without_autocast, with_kwargs=True)
            hooked += 1
    return hooked
