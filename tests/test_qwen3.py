"""Qwen3-VL, dense and MoE (``model.family=qwen3_vl`` / ``qwen3_vl_moe``, tiny twins ``tiny_qwen3_vl`` /
``tiny_qwen3_vl_moe``): the real Qwen3 token ids and chat template (no default system turn), the real
``Qwen3VLProcessor`` with 16-pixel patches; lco's embeddings of text and image items equal a hand-written
transformers forward of each prompt alone (final-norm state at the last token, deepstack and routed experts
included); packed passes and a shared prefix keep them; ``python -m lco.train model=<twin> data=scenes_mm``
trains LoRA on the decoder only (on the MoE twin with ``method.experts=true``, the experts' fused weights too);
video data is refused before anything loads."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.nn.functional import normalize

from lco.config import check_modalities
from lco.errors import ConfigError
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


def test_embeddings_equal_a_plain_transformers_forward(twin):
    """Each item alone through ``Qwen3VLModel`` / ``Qwen3VLMoeModel`` (no lco code past the processor): the final-norm
    state of the last token, normalised, equals lco's batched, left-padded embedding."""
    _, family, embedder = twin
    if family == "qwen3_vl_moe":  # the decoder routes its first layer's tokens to experts, the second is dense
        layers = embedder.backbone.model.model.language_model.layers
        assert [type(layer.mlp).__name__ for layer in layers] == ["Qwen3VLMoeTextSparseMoeBlock",
                                                                  "Qwen3VLMoeTextMLP"]
    assert_each_alone_equals_the_batch(embedder, ITEMS)


def assert_each_alone_equals_the_batch(embedder, items) -> None:
    """lco's left-padded batch of ``items`` (text and image) equals each item's prompt alone through the headless
    transformers model (no lco code past the processor): the final-norm state of its last token, normalised."""
    batch = embedder.preprocessor(items)
    assert batch["attention_mask"][:, 0].min() == 0  # padded: the batch is not a trivial one
    with torch.no_grad():
        ours = embedder(batch)
        for row, item in enumerate(items):
            alone = embedder.backbone.processor(text=embedder.preprocessor.prompts([item]),
                                                images=[item["image"]] if "image" in item else None,
                                                return_tensors="pt")
            hidden = embedder.backbone.model.model(**alone, use_cache=False).last_hidden_state
            assert _relative(ours[row], normalize(hidden[0, -1], dim=-1)) <= 1e-5, item


def test_packed_image_passes_and_a_shared_prefix_keep_the_embeddings(twin):
    name, family, embedder = twin
    batch = embedder.preprocessor(ITEMS[1:3] * 2)
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


def test_video_data_is_refused_for_qwen3_vl():
    with pytest.raises(ConfigError, match="handles only text, image"):
        check_modalities({"text", "video"}, FAMILY, f"lco-tiny/{NAME}")


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
