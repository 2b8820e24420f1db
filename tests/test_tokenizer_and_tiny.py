from transformers import AutoTokenizer

from lco.models.tiny import materialize
from lco.models.tokenizer import build_qwen_tokenizer


def test_qwen_ids_match_the_published_tokenizer():
    tok = build_qwen_tokenizer("omni")
    # ids of the real Qwen2.5 tokenizer for these strings
    assert tok("Hello world, 你好!")["input_ids"] == [9707, 1879, 11, 220, 108386, 0]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.convert_tokens_to_ids(["<|AUDIO|>", "<|vision_bos|>", "<|IMAGE|>", "<|VIDEO|>"]) == [
        151646, 151652, 151655, 151656]
    assert tok.padding_side == "left" and tok.pad_token_id == 151643


def test_vl_special_tokens_and_user_token():
    tok = build_qwen_tokenizer("vl")
    assert tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|video_pad|>"]) == [151652, 151655, 151656]
    assert tok("user", add_special_tokens=False)["input_ids"] == [872]  # Omni config's user_token_id


def test_tiny_folder_is_a_plain_hf_folder(tmp_path):
    path = materialize("tiny_vl")
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    assert materialize("tiny_vl") == path  # cached, deterministic name
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.image_token == "<|image_pad|>" and tok.chat_template


def test_materialize_leaves_the_global_rng_alone(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("LCO_CACHE", str(tmp_path))
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    materialize("tiny_text")  # written now (empty cache)
    assert torch.equal(torch.rand(3), expected)
