"""Published model shapes for ``python -m lco.bench.gpu`` (random weights, no download) and their FLOPs.

``SIZES``: bench size -> ``Shape`` (family, the tiny twin whose processor and token ids it borrows, and the
config kwargs of the published checkpoint's ``config.json``: the Qwen2.5-Omni thinkers of FIELD_NOTES section 2,
Qwen3-VL-8B-Instruct, Qwen3-Omni-30B-A3B-Instruct's thinker). ``DRY_RUNS``: sizes that build a tiny twin on CPU
so the tests run the bench's code. ``model_config(size)`` -> the transformers config; ``model_flops_per_token``
counts active parameters (an MoE token runs its top-k experts only).
"""

from __future__ import annotations

from dataclasses import dataclass

from lco.errors import ConfigError


@dataclass(frozen=True)
class Shape:
    family: str
    twin: str  # tiny twin (``lco/models/tiny.py``): processor and token ids; its sizes for a dry run
    spec: dict | None = None  # config kwargs (``text``, ``vision``, ``audio``); None: the twin's own


_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
               spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[7, 15, 23, 31])
_AUDIO = dict(encoder_layers=32, d_model=1280, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128,
              max_source_positions=1500, n_window=100)
_ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
_TEXT = dict(vocab_size=151936, rms_norm_eps=1e-6, max_position_embeddings=32768, pad_token_id=151643,
             eos_token_id=151645, bos_token_id=151643, rope_parameters=_ROPE)
# Qwen3's vision tower (SigLIP-2 sized, 16-pixel patches, deepstack from blocks 8, 16, 24) and interleaved rotary
_QWEN3_VISION = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                     spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                     deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh")
_QWEN3_ROPE = {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True}

SIZES: dict[str, Shape] = {
    "omni_3b": Shape("qwen2_5_omni", "tiny_omni", {
        "text": dict(_TEXT, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                     num_key_value_heads=2, tie_word_embeddings=True),
        "vision": dict(_VISION, out_hidden_size=2048), "audio": dict(_AUDIO, output_dim=2048)}),
    "omni_7b": Shape("qwen2_5_omni", "tiny_omni", {
        "text": dict(_TEXT, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, tie_word_embeddings=False),
        "vision": dict(_VISION, out_hidden_size=3584), "audio": dict(_AUDIO, output_dim=3584)}),
    "qwen3_vl_8b": Shape("qwen3_vl", "tiny_qwen3_vl", {
        "text": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                     max_position_embeddings=262144, pad_token_id=151643, tie_word_embeddings=False,
                     rope_parameters={**_QWEN3_ROPE, "rope_theta": 5e6}),
        "vision": dict(_QWEN3_VISION, out_hidden_size=4096)}),
    "qwen3_omni_30b_a3b": Shape("qwen3_omni", "tiny_qwen3_omni", {
        "text": dict(vocab_size=152064, hidden_size=2048, intermediate_size=768, moe_intermediate_size=768,
                     num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                     num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, rms_norm_eps=1e-6,
                     max_position_embeddings=65536, pad_token_id=151643,
                     rope_parameters={**_QWEN3_ROPE, "rope_theta": 1e6}),
        "vision": dict(_QWEN3_VISION, out_hidden_size=2048),
        "audio": dict(encoder_layers=32, d_model=1280, encoder_attention_heads=20, encoder_ffn_dim=5120,
                      num_mel_bins=128, max_source_positions=1500, n_window=50, n_window_infer=800,
                      downsample_hidden_size=480, output_dim=2048)}),
}
DRY_RUNS: dict[str, Shape] = {"dry_run": Shape("qwen2_5_omni", "tiny_omni"),
                              "dry_run_qwen3_vl": Shape("qwen3_vl", "tiny_qwen3_vl"),
                              "dry_run_qwen3_omni": Shape("qwen3_omni", "tiny_qwen3_omni")}


def shape(size: str) -> Shape:
    if size not in SIZES and size not in DRY_RUNS:
        raise ConfigError(f"size={size!r}: choose one of {sorted(SIZES)}, or {', '.join(DRY_RUNS)} (tiny, CPU).")
    return SIZES.get(size) or DRY_RUNS[size]


def model_config(size: str):
    """The transformers config of bench ``size`` (published shapes, or a dry run's tiny twin)."""
    from lco.models.tiny import TINY_SPECS, config_for

    found = shape(size)
    return config_for(found.family, found.spec or TINY_SPECS[found.twin][2])


def model_flops_per_token(text_config, seq_len: int) -> float:
    """``4 N + 12 L H Q T``: N the decoder's matmul parameters a token uses (attention, its MLP or its top-k
    experts and the router; no embeddings, the LM head never runs), L layers, H heads, Q head dim, T tokens."""
    c = text_config
    q = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attn = c.hidden_size * q * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    dense = 3 * c.hidden_size * c.intermediate_size
    experts = getattr(c, "num_experts", None)
    if experts:
        routed = c.num_experts_per_tok * 3 * c.hidden_size * c.moe_intermediate_size + c.hidden_size * experts
        every = getattr(c, "decoder_sparse_step", 1) or 1
        mlp = sum(dense if (i in (c.mlp_only_layers or []) or (i + 1) % every) else routed
                  for i in range(c.num_hidden_layers))
    else:
        mlp = c.num_hidden_layers * dense
    n = c.num_hidden_layers * attn + mlp
    return 4 * n + 12 * c.num_hidden_layers * c.num_attention_heads * q * seq_len
