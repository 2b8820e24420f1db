"""Every model-family difference lives here: class, decoder path, towers, processor parts, prompt tokens.

A family is identified by the ``model.family`` config key. ``lm_prefix`` is the module path of the language
decoder inside the loaded model (transformers 5 layout); ``towers`` are the modality encoders (with their
projectors) that lco always freezes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lco.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    model_class: str
    lm_prefix: str
    towers: tuple[str, ...]
    modalities: tuple[str, ...]
    processor_class: str
    feature_extractor_class: str | None = None
    config_key: str | None = None  # sub-config to use from a composite checkpoint config (Omni's thinker)
    mrope: bool = False  # multimodal rotary positions: position_ids [4, N, T] (text, temporal, height, width)
    moe: bool = False  # routed experts with fused weights in the decoder's MLPs (LoRA's ``experts`` option)
    # linear-attention (recurrent) decoder layers: items cannot share a packed row or a cached prefix
    recurrent: bool = False


FAMILIES: dict[str, Family] = {
    "qwen2": Family("qwen2", "AutoModelForCausalLM", "model", (), ("text",), "tokenizer"),
    "qwen2_vl": Family("qwen2_vl", "Qwen2VLForConditionalGeneration", "model.language_model", ("model.visual",),
                       ("text", "image", "video"), "Qwen2VLProcessor", mrope=True),
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "model.language_model",
                         ("model.visual",), ("text", "image", "video"), "Qwen2_5_VLProcessor", mrope=True),
    # Qwen3-VL (dense): its video prompts carry each frame pair's time (``<1.0 seconds>``), from the frame indices
    # and fps lco's preprocessing passes (lco/preprocess.py)
    "qwen3_vl": Family("qwen3_vl", "Qwen3VLForConditionalGeneration", "model.language_model", ("model.visual",),
                       ("text", "image", "video"), "Qwen3VLProcessor", mrope=True),
    # Qwen3-VL MoE (30B-A3B, 235B-A22B): the same towers and processor; the decoder's MLPs are routed experts with
    # fused 3-D weights (no nn.Linear), so LoRA's default targets reach attention and any dense MLP layers, and
    # the experts only with method.experts=true (peft target_parameters); the router stays frozen
    "qwen3_vl_moe": Family("qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration", "model.language_model",
                           ("model.visual",), ("text", "image", "video"), "Qwen3VLProcessor", mrope=True, moe=True),
    # Qwen3-Omni's thinker (30B-A3B): Qwen3-VL's vision tower, an audio encoder and an MoE decoder; its video
    # processor is Qwen2-VL's with 16-pixel patches; video tokens are timed by its processor's default 1 fps (README)
    "qwen3_omni": Family("qwen3_omni", "Qwen3OmniMoeThinkerForConditionalGeneration", "model.language_model",
                         ("model.visual", "model.audio_tower"), ("text", "image", "video", "audio"),
                         "Qwen3OmniMoeProcessor",
                         "WhisperFeatureExtractor", config_key="thinker_config", mrope=True, moe=True),
    # Qwen3.5 (dense; MoE: routed experts beside a shared expert): 3 of every 4 decoder layers are Gated DeltaNet
    # linear attention (``linear_attn``), a causal convolution and a recurrence over the row. Left padding is zeroed
    # before both, so padded batches are exact; packed rows and a shared prefix are refused (config.py). Video as
    # for Qwen3-VL
    "qwen3_5": Family("qwen3_5", "Qwen3_5ForConditionalGeneration", "model.language_model", ("model.visual",),
                      ("text", "image", "video"), "Qwen3VLProcessor", mrope=True, recurrent=True),
    "qwen3_5_moe": Family("qwen3_5_moe", "Qwen3_5MoeForConditionalGeneration", "model.language_model",
                          ("model.visual",), ("text", "image", "video"), "Qwen3VLProcessor", mrope=True, moe=True,
                          recurrent=True),
    "qwen2_5_omni": Family("qwen2_5_omni", "Qwen2_5OmniThinkerForConditionalGeneration", "model.language_model",
                           ("model.visual", "model.audio_tower"), ("text", "image", "video", "audio"),
                           "Qwen2_5OmniProcessor", "WhisperFeatureExtractor", config_key="thinker_config",
                           mrope=True),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"model.family={name!r} is not a known family; choose one of {sorted(FAMILIES)}.")
    return FAMILIES[name]
