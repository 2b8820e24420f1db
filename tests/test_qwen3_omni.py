"""Qwen3-Omni's thinker (``model.family=qwen3_omni``, tiny twin ``tiny_qwen3_omni``): the real Qwen3-Omni token ids
and ``Qwen3OmniMoeProcessor``; lco's embeddings of text, image, audio and video items equal a hand-written
transformers forward of each prompt alone; packed media passes keep them; ``python -m lco.train model=tiny_qwen3_omni``
on audio, image, video and text triplets trains LoRA on the decoder only (attention and routed experts)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lco.errors import ConfigError
from lco.methods.lora import LoRA
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.step.pack_media import pack_media
from tests.media_fixtures import SCENES, caption, write_jsonl
from tests.test_packing import _relative
from tests.test_qwen3 import assert_each_alone_equals_the_batch, picture

NAME, FAMILY = "tiny_qwen3_omni", "qwen3_omni"


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return Embedder(load_backbone(FAMILY, f"lco-tiny/{NAME}", dtype="float32")).eval()


def items(media) -> list[dict]:
    root, files = media
    clip = str(root / files["audio"][0])
    return [{"text": "A man is playing a guitar."}, {"image": picture(0)}, {"audio": clip},
            {"text": "Listen:", "audio": clip}, {"text": "Look:", "image": picture(1)},
            {"video": str(root / files["mp4"][0])}, {"text": "Watch:", "video": str(root / files["video"][0])}]


def test_tokens_template_and_processor_are_qwen3_omnis(embedder):
    tokenizer = embedder.preprocessor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|image_pad|>", "<|audio_start|>", "<|audio_end|>",
                                            "<|audio_pad|>"]) == [151644, 151655, 151669, 151670, 151675]
    config = embedder.backbone.model.config
    assert (config.audio_token_id, config.audio_start_token_id, config.image_token_id) == (151675, 151669, 151655)
    prompt = embedder.preprocessor.prompts([{"audio": "x.wav"}])[0]
    assert prompt == ("<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>\nSummarize the above audio in one "
                      "word:<|im_end|>\n<|im_start|>assistant\n")  # no default system turn, as Qwen3's
    assert type(embedder.backbone.processor).__name__ == "Qwen3OmniMoeProcessor"
    layers = embedder.backbone.model.model.language_model.layers
    assert [type(layer.mlp).__name__ for layer in layers] == ["Qwen3OmniMoeThinkerTextSparseMoeBlock"] * 2


def test_embeddings_equal_a_plain_transformers_forward(embedder, media):
    """Each item alone through ``Qwen3OmniMoeThinkerModel`` (the processor, then transformers): the final-norm state
    of the last token, normalised, equals lco's batched, left-padded embedding."""
    batch = embedder.preprocessor(items(media))
    assert {"pixel_values", "input_features", "pixel_values_videos"} <= set(batch)
    # Qwen3-Omni's video processor is Qwen2-VL's with 16-pixel patches; the Omni processor's own budget (at least
    # 128 x 32 x 32 pixels per frame) enlarges the 64-pixel frames to 24 x 24 patches
    assert batch["video_grid_thw"].tolist() == [[3, 24, 24], [2, 24, 24]]
    assert batch["pixel_values_videos"].shape[1] == 3 * 2 * 16 * 16
    assert_each_alone_equals_the_batch(embedder, items(media))


def test_packed_media_passes_keep_the_embeddings(embedder, media):
    batch = embedder.preprocessor(items(media)[1:] * 2)
    with torch.no_grad():
        reference = embedder(batch)
        for width in (10_000, 64):
            packed, _ = pack_media(batch, width)
            assert _relative(embedder(packed), reference) <= 1e-5


def test_a_run_on_audio_image_video_and_text_trains_the_decoders_lora_only(tmp_path, media):
    root, files = media
    anchors = [{"audio_path": str(root / files["audio"][i % 4])} if i % 4 == 0 else
               {"image_path": str(root / files["image"][i % 4])} if i % 4 == 1 else
               {"video_path": str(root / files["video"][i % 4])} if i % 4 == 2 else {"text": caption(SCENES[i % 4])}
               for i in range(16)]
    rows = [{"anchor": {"text": "", **a}, "positive": {"text": caption(SCENES[i % 4])},
             "negative": {"text": caption(SCENES[(i + 1) % 4])}} for i, a in enumerate(anchors)]
    data = write_jsonl(tmp_path / "omni.jsonl", rows)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "lco.train", f"model={NAME}", "data=jsonl",
                           f"data.sources.jsonl.path={data}", "data.sources.jsonl.allow_outside_root=true",
                           "data.val_size=0", "data.batch_size=8", "trainer.max_steps=2", "logger=csv", "method.r=4",
                           "method.experts=true", "method.dropout=0", f"paths.log_dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (adapter,) = Path(tmp_path).glob("train/runs/*/adapter/adapter_model.safetensors")
    tensors = load_file(str(adapter))
    # no tower (peft alone would put the regex's q/k/v/o LoRA in the towers too: lco/methods/lora.py), no router
    assert tensors and all(".language_model.layers." in k for k in tensors)
    moved = [k for k, v in tensors.items() if "lora_B" in k and float(v.abs().max()) > 0]
    assert len(moved) == len([k for k in tensors if "lora_B" in k]) == 2 * (4 + 2)  # layers x (attention, experts)


def test_peft_retargeting_a_regex_is_caught_not_trained(monkeypatch):
    """Given lco's decoder regex instead of full names, peft 0.21 turns it into bare leaf names for Qwen3-Omni (an MoE
    type transformers 5 re-fused) and adapts the towers' q/k/v/o too: lco's check after wrapping stops that."""
    import peft

    import lco.methods.lora as lora

    method = LoRA(r=4, alpha=8, dropout=0.0)
    regex = method.target_regex("model.language_model")

    def regex_config(**kwargs):
        return peft.LoraConfig(**{**kwargs, "target_modules": regex})

    monkeypatch.setattr(lora, "LoraConfig", regex_config)
    fresh = Embedder(load_backbone(FAMILY, f"lco-tiny/{NAME}", dtype="float32"))
    with pytest.raises(ConfigError, match="audio_tower"):
        method.apply(fresh)
