"""LoRA on the language decoder only (the paper's method).

Targets are matched by a regex anchored on the family's decoder path (``model.language_model.layers.N...``),
so same-named projections inside the vision tower (``mlp.gate_proj``...) or audio tower never get adapters.
Towers, projectors, embeddings and norms stay frozen. ``save`` writes a standard peft adapter folder.
MoE decoders (Qwen3-VL MoE, Qwen3-Omni's thinker) keep their routed experts as fused 3-D parameters, not
``nn.Linear`` modules, so the targets reach attention (and dense or shared-expert MLPs where a layer has them);
``experts=true`` adds LoRA on each layer's ``mlp.experts.gate_up_proj`` and ``down_proj`` through peft's
``target_parameters``: each expert gets its own low-rank update, and peft allows no LoRA dropout there
(``dropout`` must be 0). Routers stay frozen; a shared expert (Qwen3.5 MoE: ``mlp.shared_expert.*``) takes the
MLP ``targets`` like a dense MLP. Decoders with linear-attention layers (Qwen3.5's Gated DeltaNet,
``linear_attn``) get LoRA on the projections named in ``linear_targets`` there.
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

EXPERTS_DROPOUT = ("method.experts=true with method.dropout={dropout}: peft's LoRA on parameters (the MoE experts' "
                   "fused weights) takes no dropout. Set method.dropout=0, or method.experts=false.")
REFERENCE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Gated DeltaNet's projections (Qwen3.5): fused q/k/v in, output gate, out; not the per-head decay / beta gates
LINEAR_TARGETS = ("in_proj_qkv", "in_proj_z", "out_proj")


class LoRA(Method):
    name = "lora"

    def __init__(self, r: int = 64, alpha: int = 128, dropout: float = 0.05,
                 targets: tuple[str, ...] | list[str] = REFERENCE_TARGETS, layers: list[int] | None = None,
                 experts: bool = False, linear_targets: tuple[str, ...] | list[str] = LINEAR_TARGETS):
        if r <= 0:
            raise ConfigError(f"method.r must be a positive integer, got {r}")
        if experts not in (True, False):
            raise ConfigError(f"method.experts={experts!r} is not valid: use true (LoRA on MoE expert weights too) "
                              "or false.")
        if experts and dropout:
            raise ConfigError(EXPERTS_DROPOUT.format(dropout=dropout))
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.targets, self.linear_targets = tuple(targets), tuple(linear_targets)
        self.layers = layers
        self.experts = experts
        self.modules_to_save: list[str] | None = None  # whole modules trained and saved beside the adapter

    def _layer_regex(self, lm_prefix: str) -> str:
        """The chosen decoder layers' path, ``<lm_prefix>.layers.(N|...)``."""
        layer = r"\d+" if self.layers is None else "|".join(str(i) for i in self.layers)
        return rf"{re.escape(lm_prefix)}\.layers\.({layer})"

    def target_regex(self, lm_prefix: str) -> str:
        """Full names of the adapted modules: ``targets`` under attention and (shared-expert) MLPs, and
        ``linear_targets`` under linear attention, in the chosen decoder layers."""
        regex = rf"{self._layer_regex(lm_prefix)}\.(self_attn|mlp|mlp\.shared_expert)\.({'|'.join(self.targets)})"
        if self.linear_targets:
            regex += rf"|{self._layer_regex(lm_prefix)}\.linear_attn\.({'|'.join(self.linear_targets)})"
        return regex

    def expert_parameters(self, model: torch.nn.Module, lm_prefix: str) -> list[str]:
        """Full names of the decoder's fused MoE expert weights in the chosen layers (none in a dense decoder)."""
        pattern = re.compile(rf"{self._layer_regex(lm_prefix)}\.mlp\.experts\.(gate_up_proj|down_proj)")
        return [name for name, _ in model.named_parameters() if pattern.fullmatch(name)]

    def apply(self, embedder) -> None:
        embedder.model.requires_grad_(False)
        prefix = embedder.family.lm_prefix
        pattern = re.compile(self.target_regex(prefix))
        modules = [name for name, _ in embedder.model.named_modules() if pattern.fullmatch(name)]
        experts = self.expert_parameters(embedder.model, prefix) if self.experts else []
        if not modules and not experts:
            raise ConfigError(f"method=lora matched no module for targets {self.targets} under {prefix}.layers; "
                              "check method.targets / method.layers.")
        if self.experts and not experts:
            raise ConfigError(f"method.experts=true, but model.family={embedder.family.name} has no fused MoE expert "
                              "weights (mlp.experts.gate_up_proj / down_proj) in the chosen decoder layers; set "
                              "method.experts=false.")
        # full names, not the regex: for MoE model types transformers 5 re-fused (Qwen3-Omni), peft rewrites a
        # regex into bare leaf names, which would also match the towers' q/k/v/o projections
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias="none",
                            target_modules=modules, target_parameters=experts or None,
                            modules_to_save=self.modules_to_save)
        try:
            embedder.model = get_peft_model(embedder.model, config)
        except ValueError as err:
            raise ConfigError(f"method=lora could not wrap targets {self.targets} under {prefix}.layers ({err}); "
                              "check method.targets / method.layers.") from err
        wrapped = (set(embedder.model.base_model.targeted_module_names)
                   | set(embedder.model.base_model.targeted_parameter_names))
        if wrapped != set(modules) | set(experts):  # peft retargeted: stop rather than train other weights
            raise ConfigError(f"method=lora: peft wrapped {sorted(wrapped ^ (set(modules) | set(experts)))[:6]} "
                              f"differently from the {len(modules) + len(experts)} decoder weights lco chose "
                              f"(model.family={embedder.family.name}); report it with your peft version.")
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
        weight = getattr(module.get_base_layer(), "weight", None)  # none: LoRA on MoE expert parameters
        if adapter is not None and weight is not None and weight.dtype != adapter.dtype:
            module.register_forward_pre_hook(_cast_only_without_autocast, with_kwargs=True)
            hooked += 1
    return hooked
