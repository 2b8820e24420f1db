"""Qwen3-VL, dense and MoE (``model.family=qwen3_vl`` / ``qwen3_vl_moe``, tiny twins ``tiny_qwen3_vl`` /
``tiny_qwen3_vl_moe``): the real Qwen3 token ids and chat template (no default system turn), the real
``Qwen3VLProcessor`` with 16-pixel patches; lco's embeddings of text, image and video items equal a hand-written
transformers forward of each prompt alone (final-norm state at the last token, deepstack and routed experts
included); a video's prompt carries each frame pair's time in its source (the file's fps, or
``preprocess.video_folder_fps`` for frame folders); lco's numpy video processor sizes clips as Qwen3-VL's does;
packed passes and a shared prefix keep the embeddings; ``python -m lco.train model=<twin> data=scenes_mm``
trains LoRA on the decoder only (on the MoE twin with ``method.experts=true``, the experts' fused weights too)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.nn.functional import normalize

from lco.data.media import load_audio, load_video
from lco.errors import ConfigError
from lco.preprocess import _timestamps
from lco.methods.lora import LoRA
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.step import Step
from lco.step.pack_media import pack_media
from tests.test_packing import _relative, _step_result, _text_records

NAME, FAMILY = "tiny_qwen3_vl", "qwen3_vl"
TWINS = [(NAME, FAMILY), ("tiny_qwen3_vl_moe", "qwen3_vl_moe")]


@pytest.fixture(scope="module", params=TWINS, ids=[family for _, family in TWINS])
def twin(request):
    torch.manual_seed(0)
    name, family = request.param
    return name, family, Embedder(load_backbone(family, f"lco-tiny/{name}", dtype="float32")).eval()



def picture(seed: int, size=(90, 130)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


ITEMS = [{"text": "A man is playing a guitar."}, {"image": picture(0)}, {"text": "Look closely:", "image": picture(1)},
         {"text": "Zwei Hunde rennen über ein verschneites Feld, und die Sonne scheint auf den Schnee."}]


def with_videos(media) -> list[dict]:
    """``ITEMS`` and two videos: the mp4 (6 frames at 4 fps) and, with text, a folder of 3 frames."""
    root, files = media
    return ITEMS + [{"video": str(root / files["mp4"][0])},
                    {"text": "Watch:", "video": str(root / files["video"][0])}]


def test_tokens_template_and_processor_are_qwen3s(twin):
    embedder = twin[2]
    tokenizer = embedder.preprocessor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|vision_start|>", "<|image_pad|>", "<think>"]) == [
        151644, 151652, 151655, 151667]
    prompt = embedder.preprocessor.prompts([{"text": "a red cube"}])[0]
    assert prompt == ("<|im_start|>user\na red cube\nSummarize the above text in one word:<|im_end|>\n"
                      "<|im_start|>assistant\n")  # Qwen3's template has no default system turn
    processor = embedder.backbone.processor
    assert type(processor).__name__ == "Qwen3VLProcessor" and processor.image_processor.patch_size == 16
    batch = embedder.preprocessor([{"image": picture(0)}])
    grid = batch["image_grid_thw"][0].tolist()
    assert grid[0] == 1 and (batch["input_ids"] == 151655).sum() == grid[1] * grid[2] // 4  # 2x2 merged patches
    assert "mm_token_type_ids" in batch  # the multimodal rotary positions need it


def test_embeddings_equal_a_plain_transformers_forward(twin, media):
    """Each item alone through ``Qwen3VLModel`` / ``Qwen3VLMoeModel`` (no lco code past the processor): the final-norm
    state of the last token, normalised, equals lco's batched, left-padded embedding."""
    _, family, embedder = twin
    if family == "qwen3_vl_moe":  # the decoder routes its first layer's tokens to experts, the second is dense
        layers = embedder.backbone.model.model.language_model.layers
        assert [type(layer.mlp).__name__ for layer in layers] == ["Qwen3VLMoeTextSparseMoeBlock",
                                                                  "Qwen3VLMoeTextMLP"]
    assert_each_alone_equals_the_batch(embedder, with_videos(media))


def assert_each_alone_equals_the_batch(embedder, items) -> None:
    """lco's left-padded batch of ``items`` (text, image, audio, video) equals each item's prompt alone through the
    headless transformers model (no lco code past the processor but the decoding of the video's frames): the
    final-norm state of its last token, normalised."""
    pre = embedder.preprocessor
    batch = pre(items)
    assert batch["attention_mask"][:, 0].min() == 0  # padded: the batch is not a trivial one
    with torch.no_grad():
        ours = embedder(batch)
        for row, item in enumerate(items):
            media = {"images": [item["image"]]} if "image" in item else {}
            if "audio" in item:
                media["audio"] = [load_audio(item["audio"], pre.processor.feature_extractor.sampling_rate)]
            if "video" in item:
                clip = load_video(item["video"], pre.video_max_frames, pre.image_max_size)
                media["videos"] = [clip.frames]
                if _timestamps(embedder.backbone.processor):
                    media.update(video_metadata=[clip.metadata(pre.video_folder_fps)], do_sample_frames=False)
            alone = embedder.backbone.processor(text=pre.prompts([item]), **media, return_tensors="pt")
            hidden = embedder.backbone.model.model(**alone, use_cache=False).last_hidden_state
            assert _relative(ours[row], normalize(hidden[0, -1], dim=-1)) <= 1e-5, item


def test_packed_media_passes_and_a_shared_prefix_keep_the_embeddings(twin, media):
    name, family, embedder = twin
    batch = embedder.preprocessor(with_videos(media)[1:] * 2)
    with torch.no_grad():
        reference = embedder(batch)
        for width in (10_000, 64):
            packed, _ = pack_media(batch, width)
            assert _relative(embedder(packed), reference) <= 1e-5
    records = _text_records()
    loss, grads, _ = _step_result(family, name, Step(pack=False), records)
    for step in (Step(pack=True), Step(pack=True, share_prefix=True), Step(pack=False, share_prefix=True,
                                                                          cache_chunk=4)):
        other_loss, other_grads, planned = _step_result(family, name, step, records)
        assert planned["passes"][0]["prefix"] == (3 if step.share_prefix else 0)  # <|im_start|>user\n
        assert abs(float(other_loss - loss)) <= 1e-5 * abs(float(loss))
        assert _relative(other_grads, grads) <= 1e-5


def test_a_videos_prompt_carries_its_frame_times(twin, media):
    """Each frame pair's mean source time, ``<t seconds>`` before its tokens: the mp4's 6 frames at 4 fps give
    (0 + 1) / 2 / 4 = 0.125 s, 0.625 s, 1.125 s; 2 frames sampled of 6 are frames 0 and 5; a folder's 3 frames
    (the last repeated) are taken at ``video_folder_fps``."""
    import dataclasses

    root, files = media
    embedder = twin[2]
    mp4, folder = str(root / files["mp4"][0]), str(root / files["video"][0])

    def times(pre, video):
        batch = pre([{"video": video}])
        text = pre.tokenizer.decode(batch["input_ids"][0])
        grid = batch["video_grid_thw"][0].tolist()
        per_pair = (text.split("seconds>")[1].count("<|video_pad|>"), grid[1] * grid[2] // 4)
        assert per_pair[0] == per_pair[1]  # each pair's merged patches follow its time
        return [float(t.split("<")[-1]) for t in text.split(" seconds>")[:-1]]

    pre = embedder.preprocessor
    assert times(pre, mp4) == [0.1, 0.6, 1.1]  # formatted with one decimal, as Qwen3-VL's processor does
    assert times(dataclasses.replace(pre, video_max_frames=2), mp4) == [0.6]  # (0 + 5) / 2 / 4 = 0.625
    assert times(dataclasses.replace(pre, video_folder_fps=1.0), folder) == [0.5, 2.0]  # frames 0, 1 and 2, 2


@pytest.mark.parametrize("frames,height,width,cap", [(2, 90, 130, False), (4, 64, 64, False), (16, 720, 1280, False),
                                                     (6, 33, 400, False), (16, 720, 1280, True), (2, 30, 30, True)])
def test_lcos_video_processor_sizes_clips_as_qwen3_vls(frames, height, width, cap):
    """The patch grid of ``FramesVideoProcessor(kind=Qwen3VLVideoProcessor)`` on a clip equals what transformers'
    ``Qwen3VLVideoProcessor`` counts for it (its size arithmetic runs without torchvision), in budgets that
    shrink, keep and enlarge the frames, with and without the per-frame cap."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from lco.models.processor import QWEN3_VIDEO, FramesVideoProcessor

    size = {"shortest_edge": 4 * 32 * 32, "longest_edge": 64 * 32 * 32}
    ours = FramesVideoProcessor(size["shortest_edge"], size["longest_edge"], patch_size=16, kind=QWEN3_VIDEO,
                                cap_pixels_per_frame=cap, max_video_tokens=16)
    clip = [np.zeros((height, width, 3), dtype=np.uint8)] * frames
    grid = ours([clip], return_tensors="pt")["video_grid_thw"][0]
    theirs = Qwen3VLVideoProcessor(patch_size=16, size=size, cap_pixels_per_frame=cap, max_video_tokens=16)
    assert int(grid.prod()) == theirs.get_num_of_video_patches(frames, height, width)
    assert int(grid[0]) == frames // 2


@pytest.mark.parametrize("name,experts", [(NAME, False), ("tiny_qwen3_vl_moe", True)], ids=["dense", "moe-experts"])
def test_a_run_trains_lora_on_the_decoder_only(tmp_path, name, experts):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    extra = ["method.experts=true", "method.dropout=0"] if experts else []
    proc = subprocess.run([sys.executable, "-m", "lco.train", f"model={name}", "data=scenes_mm",
                           "data.sources.scenes.n=32", "data.sources.scene_images.n=32", "data.val_size=8",
                           "data.batch_size=8", "trainer.max_steps=4", "logger=csv", "method.r=4",
                           f"paths.log_dir={tmp_path}", *extra], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (adapter,) = tmp_path.glob("train/runs/*/adapter/adapter_model.safetensors")
    tensors = load_file(str(adapter))
    assert tensors and all(".language_model.layers." in k for k in tensors)  # no tower, no projector, no router
    moved = [k for k, v in tensors.items() if "lora_B" in k and float(v.abs().max()) > 0]
    # dense: 2 layers x 7 targets; MoE: 4 attention targets in the routed layer, its experts' two fused weights,
    # the dense layer's 7
    assert len(moved) == len([k for k in tensors if "lora_B" in k]) == (4 + 2 + 7 if experts else 2 * 7)
    if experts:
        assert {k.split(".mlp.experts")[0].rsplit(".", 1)[-1] for k in tensors if ".mlp.experts" in k} == {"0"}


def test_expert_lora_is_checked_before_anything_loads():
    from omegaconf import OmegaConf

    from lco.config import _family_problems

    dense = OmegaConf.create({"model": {"family": "qwen3_vl"}, "method": {"experts": True, "dropout": 0.05}})
    problems = _family_problems(dense)
    assert len(problems) == 2 and "has a dense decoder" in problems[0] and "qwen3_vl_moe" in problems[0]
    assert "method.dropout=0.05" in problems[1] and "takes no dropout" in problems[1]
    moe = OmegaConf.create({"model": {"family": "qwen3_vl_moe"}, "method": {"experts": True, "dropout": 0.0}})
    assert _family_problems(moe) == []
    with pytest.raises(ConfigError, match="takes no dropout"):
        LoRA(experts=True)
