"""Offline tiny twins of the supported families: random weights, real Qwen token ids, real processor classes.

``materialize("tiny_omni")`` writes an ordinary HF folder (config, safetensors weights, tokenizer, processor,
chat template) under the lco cache, built deterministically from a seed, and returns its path. lco then loads
it with the same ``from_pretrained`` code as a real checkpoint, so tests exercise the user's code path.
The hub id ``lco-tiny/<name>`` in ``model.path`` refers to these folders. ``toy_omni_pretrained`` is the toy
world's generatively pretrained thinker (``python -m lco.pretrain``), rebuilt from ``toy_omni`` plus the packed
weights shipped in ``lco/assets`` (``lco.models.delta``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lco.cache import cache_root
from lco.errors import ConfigError

TINY_PREFIX = "lco-tiny/"
_TEXT = dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=True,
             pad_token_id=151643, eos_token_id=151645, bos_token_id=151643)
_MROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
               fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
# Qwen3-VL: q/k norms, head_dim set apart from the width, interleaved multimodal rotary, 16-pixel patches, a
# learned position grid and deepstack (vision block 0's features added to decoder layer 0)
_QWEN3_TEXT = dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                   rms_norm_eps=1e-6, pad_token_id=151643, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                         "mrope_section": [2, 3, 3], "mrope_interleaved": True})
_QWEN3_MOE = dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)  # 4 fused experts, 2 per token
_QWEN3_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                     spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
                     deepstack_visual_indexes=[0])
# Qwen3.5: layer 0 Gated DeltaNet linear attention (2 key heads serving 4 value heads, as the real 16/32), layer 1
# gated full attention on a quarter of each head's dimensions rotated; Qwen3.5's vocabulary and special-token ids
_QWEN3_5_TEXT = dict(vocab_size=248320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32, layer_types=["linear_attention",
                     "full_attention"], linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                     linear_value_head_dim=16, linear_conv_kernel_dim=4, max_position_embeddings=4096,
                     rms_norm_eps=1e-6, pad_token_id=248044, eos_token_id=248046, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                      "mrope_section": [2, 1, 1], "mrope_interleaved": True})
_QWEN3_5_VISION = {k: v for k, v in _QWEN3_VISION.items() if k != "deepstack_visual_indexes"}

# name -> (family, tokenizer flavour, config kwargs)
TINY_SPECS: dict[str, tuple[str, str, dict]] = {
    "tiny_text": ("qwen2", "vl", {"text": _TEXT}),
    "tiny_vl": ("qwen2_5_vl", "vl", {"text": {**_TEXT, "rope_parameters": _MROPE}, "vision": _VISION}),
    # the toy world's backbone (FIELD_NOTES section 6): text 128 wide x 4 layers, ViT 64 wide x 3 blocks
    "toy_omni": ("qwen2_5_omni", "omni", {
        "text": {**_TEXT, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
                 "rope_parameters": {**_MROPE, "mrope_section": [4, 6, 6]}},
        "vision": {**_VISION, "depth": 3, "hidden_size": 64, "intermediate_size": 128, "out_hidden_size": 128,
                   "fullatt_block_indexes": [2]},
        "audio": dict(encoder_layers=2, d_model=32, encoder_attention_heads=2, encoder_ffn_dim=64, output_dim=128,
                      num_mel_bins=128, max_source_positions=1500, n_window=100),
    }),
    "tiny_qwen3_vl": ("qwen3_vl", "qwen3", {"text": _QWEN3_TEXT, "vision": _QWEN3_VISION}),
    # Qwen3-VL MoE: layer 0 routes 4 experts with fused weights (2 per token), layer 1 keeps a dense MLP
    "tiny_qwen3_vl_moe": ("qwen3_vl_moe", "qwen3", {
        "text": {**_QWEN3_TEXT, **_QWEN3_MOE, "mlp_only_layers": [1]},
        "vision": _QWEN3_VISION}),
    # Qwen3-Omni's thinker: every decoder layer routed (as the published 30B-A3B), Qwen3-VL's vision tower and
    # Qwen3-Omni's audio encoder (convolutional downsampling before its transformer, 50-frame windows)
    "tiny_qwen3_omni": ("qwen3_omni", "qwen3_omni", {
        "text": {**_QWEN3_TEXT, **_QWEN3_MOE},
        "vision": _QWEN3_VISION,
        "audio": dict(encoder_layers=2, d_model=32, encoder_attention_heads=2, encoder_ffn_dim=64, output_dim=64,
                      num_mel_bins=128, max_source_positions=1500, n_window=50, downsample_hidden_size=16)}),
    "tiny_qwen3_5": ("qwen3_5", "qwen3_5", {"text": _QWEN3_5_TEXT, "vision": _QWEN3_5_VISION}),
    # Qwen3.5 MoE: both layers route 4 fused experts (2 per token) beside a gated shared expert
    "tiny_qwen3_5_moe": ("qwen3_5_moe", "qwen3_5", {
        "text": {**_QWEN3_5_TEXT, **_QWEN3_MOE, "shared_expert_intermediate_size": 32}, "vision": _QWEN3_5_VISION}),
    "tiny_omni": ("qwen2_5_omni", "omni", {
        "text": {**_TEXT, "rope_parameters": _MROPE},
        "vision": _VISION,
        "audio": dict(encoder_layers=2, d_model=32, encoder_attention_heads=2, encoder_ffn_dim=64, output_dim=64,
                      num_mel_bins=128, max_source_positions=1500, n_window=100),
    }),
}
_FORMAT_VERSION = 3
ASSETS = Path(__file__).resolve().parent.parent / "assets"
# name -> (tiny twin it was trained from, its trained weights packed by lco.models.delta, shipped in lco/assets)
PRETRAINED: dict[str, tuple[str, str]] = {"toy_omni_pretrained": ("toy_omni", "toy_omni_pretrained.safetensors")}


_QWEN25_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def _chat_template(flavour: str) -> str:
    """The flavour's chat template: Qwen2.5's (a default system turn) or Qwen3's (none), its media tokens."""
    vl = {"VISION_BOS": "<|vision_start|>", "VISION_EOS": "<|vision_end|>", "IMAGE": "<|image_pad|>",
          "VIDEO": "<|video_pad|>", "AUDIO_BOS": "", "AUDIO": "", "AUDIO_EOS": ""}
    tokens = {
        "vl": {**vl, "DEFAULT_SYSTEM": _QWEN25_SYSTEM},
        "omni": {"VISION_BOS": "<|vision_bos|>", "VISION_EOS": "<|vision_eos|>", "IMAGE": "<|IMAGE|>",
                 "VIDEO": "<|VIDEO|>", "AUDIO_BOS": "<|audio_bos|>", "AUDIO": "<|AUDIO|>",
                 "AUDIO_EOS": "<|audio_eos|>", "DEFAULT_SYSTEM": _QWEN25_SYSTEM},
        "qwen3": {**vl, "DEFAULT_SYSTEM": ""},
        "qwen3_5": {**vl, "DEFAULT_SYSTEM": ""},
        "qwen3_omni": {**vl, "AUDIO_BOS": "<|audio_start|>", "AUDIO": "<|audio_pad|>", "AUDIO_EOS": "<|audio_end|>",
                       "DEFAULT_SYSTEM": ""},
    }[flavour]
    text = (Path(__file__).parent / "chat_template.jinja").read_text()
    for key, value in tokens.items():
        text = text.replace(f"@@{key}@@", value)
    return text


def build_config(name: str):
    """The transformers config of tiny twin ``name`` (a dict of sizes in ``TINY_SPECS``)."""
    family, _, spec = TINY_SPECS[name]
    return config_for(family, spec)


def config_for(family: str, spec: dict):
    """The transformers config of a ``family`` model with ``spec``'s sizes (``text``, ``vision``, ``audio`` kwargs):
    the tiny twins' and the GPU bench's published shapes (``lco/bench/shapes.py``)."""
    import transformers

    if family == "qwen2":
        return transformers.Qwen2Config(**spec["text"])
    if family == "qwen2_5_vl":
        return transformers.Qwen2_5_VLConfig(text_config=spec["text"], vision_config=spec["vision"],
                                             image_token_id=151655, video_token_id=151656,
                                             vision_start_token_id=151652, tie_word_embeddings=True)
    if family == "qwen3_omni":
        return transformers.Qwen3OmniMoeThinkerConfig(text_config=spec["text"], vision_config=spec["vision"],
                                                      audio_config=spec["audio"], audio_token_id=151675,
                                                      audio_start_token_id=151669, image_token_id=151655,
                                                      video_token_id=151656, vision_start_token_id=151652)
    if family in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"):
        config_class = {"qwen3_vl": transformers.Qwen3VLConfig, "qwen3_vl_moe": transformers.Qwen3VLMoeConfig,
                        "qwen3_5": transformers.Qwen3_5Config, "qwen3_5_moe": transformers.Qwen3_5MoeConfig}[family]
        tied = spec["text"].get("tie_word_embeddings", True)
        return config_class(text_config=spec["text"], vision_config=spec["vision"], tie_word_embeddings=tied)
    return transformers.Qwen2_5OmniThinkerConfig(text_config=spec["text"], vision_config=spec["vision"],
                                                 audio_config=spec["audio"], vision_start_token_id=151652)


def build_processor(name: str):
    """The processor (tokenizer for text-only) of tiny twin ``name``, from the real Qwen vocabulary."""
    from transformers import Qwen2VLImageProcessorPil, WhisperFeatureExtractor

    from lco.models.families import get_family
    from lco.models.processor import QWEN3_VIDEO, FramesVideoProcessor, assemble_processor
    from lco.models.tokenizer import build_qwen_tokenizer

    family_name, flavour, _ = TINY_SPECS[name]
    family = get_family(family_name)
    tokenizer = build_qwen_tokenizer(flavour)
    if family.processor_class == "tokenizer":
        return assemble_processor("tokenizer", tokenizer, chat_template=_chat_template(flavour))
    # Small pixel budget: a 112x112 image becomes 16 patches -> 4 merged tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=224 * 224)
    video_processor = FramesVideoProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    if flavour.startswith("qwen3"):  # Qwen3's image and video processors: 16-pixel patches, mean and std 0.5
        half = {"patch_size": 16, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
        image_processor = Qwen2VLImageProcessorPil(min_pixels=64 * 64, max_pixels=256 * 256, **half)
        # Qwen3-VL's budget covers frames x pixels of a clip; Qwen3-Omni's is Qwen2-VL's processor, per frame
        video_processor = (FramesVideoProcessor(min_pixels=64 * 64, max_pixels=128 * 128, **half)
                           if flavour == "qwen3_omni" else
                           FramesVideoProcessor(min_pixels=2 * 64 * 64, max_pixels=4 * 128 * 128, kind=QWEN3_VIDEO,
                                                **half))
    feature_extractor = WhisperFeatureExtractor(feature_size=128) if family.feature_extractor_class else None
    return assemble_processor(family.processor_class, tokenizer, image_processor, feature_extractor,
                              chat_template=_chat_template(flavour), video_processor=video_processor)


def _fingerprint(name: str) -> str:
    payload = json.dumps([_FORMAT_VERSION, TINY_SPECS[name]], sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:12]


def _pretrained_fingerprint(name: str) -> str:
    from safetensors import safe_open

    with safe_open(str(ASSETS / PRETRAINED[name][1]), framework="pt") as handle:
        return (handle.metadata() or {}).get("sha256", "unknown")[:12]


def materialize(name: str, seed: int = 0) -> Path:
    """Write (once) and return the HF folder of tiny twin ``name``; atomic, so parallel callers are safe.
    A name in ``PRETRAINED`` is its base twin (``seed``) with the shipped trained weights written in."""
    if name not in TINY_SPECS and name not in PRETRAINED:
        raise ConfigError(f"unknown tiny model {name!r}; choose one of {sorted(TINY_SPECS) + sorted(PRETRAINED)}")
    fingerprint = _pretrained_fingerprint(name) if name in PRETRAINED else _fingerprint(name)
    target = cache_root() / "tiny" / f"{name}-{fingerprint}-seed{seed}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        if name in PRETRAINED:
            from lco.models.delta import unpack

            base, weights = PRETRAINED[name]
            unpack(ASSETS / weights, materialize(base, seed), tmp)
        else:
            _build(name, seed, tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its folder is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _build(name: str, seed: int, folder: Path) -> None:
    import transformers

    from lco.models.families import get_family

    family = get_family(TINY_SPECS[name][0])
    cls = getattr(transformers, "Qwen2ForCausalLM" if family.name == "qwen2" else family.model_class)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream as if the cache had existed
        torch.manual_seed(seed)
        cls(build_config(name)).save_pretrained(folder)
    build_processor(name).save_pretrained(folder)
