"""Qwen3.5, dense and MoE (``model.family=qwen3_5`` / ``qwen3_5_moe``, twins ``tiny_qwen3_5`` / ``tiny_qwen3_5_moe``):
Qwen3.5's tokenizer class with its special-token ids (plain text by Qwen2.5's merges: the real vocabulary is not
available offline), the real ``Qwen3VLProcessor``; a decoder whose layer 0 is Gated DeltaNet linear attention.
lco's left-padded embeddings equal a hand-written transformers forward of each prompt alone; packed rows would mix
items through the recurrence, so packing and a shared prefix are refused (config and step), GradCache keeps the
loss and gradients; LoRA reaches the linear-attention projections, attention, MLPs, the shared expert and (with
``method.experts=true``) the routed experts, never a tower; ``python -m lco.train model=tiny_qwen3_5`` trains it."""

import pytest
import torch
from safetensors.torch import load_file

from lco.config import check_config
from lco.errors import ConfigError
from lco.methods.lora import LoRA
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.models.families import get_family
from lco.step import Step
from lco.step.pack_media import pack_media
from tests.conftest import compose_train, run_entry
from tests.test_packing import _relative, _step_result, _text_records
from tests.test_qwen3 import ITEMS, assert_each_alone_equals_the_batch, picture, with_videos

TWINS = [("tiny_qwen3_5", "qwen3_5"), ("tiny_qwen3_5_moe", "qwen3_5_moe")]


@pytest.fixture(scope="module", params=TWINS, ids=[family for _, family in TWINS])
def twin(request):
    torch.manual_seed(0)
    name, family = request.param
    return name, family, Embedder(load_backbone(family, f"lco-tiny/{name}", dtype="float32")).eval()


def test_tokens_processor_and_layers_are_qwen3_5s(twin):
    _, family, embedder = twin
    tokenizer = embedder.preprocessor.tokenizer
    assert type(tokenizer).__name__ == "Qwen3_5Tokenizer" and len(tokenizer) == 248070
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|video_pad|>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [248044, 248045, 248046, 248053, 248056, 248057]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (248044, 248046)
    config = embedder.backbone.model.config
    assert (config.image_token_id, config.vision_start_token_id, config.text_config.vocab_size) == (248056, 248053,
                                                                                                    248320)
    assert type(embedder.backbone.processor).__name__ == "Qwen3VLProcessor"
    layers = embedder.backbone.model.model.language_model.layers
    assert [hasattr(layer, "linear_attn") for layer in layers] == [True, False]  # Gated DeltaNet, then attention
    batch = embedder.preprocessor([{"image": picture(0)}])
    grid = batch["image_grid_thw"][0].tolist()
    assert (batch["input_ids"] == 248056).sum() == grid[1] * grid[2] // 4  # 2x2 merged 16-pixel patches


def test_left_padded_embeddings_equal_each_prompt_alone(twin, media):
    """Gated DeltaNet zeroes padded positions before its convolution and recurrence, so left padding changes
    nothing: each item alone (text, image, video with its frame times) through ``Qwen3_5Model`` (no lco code past
    the processor) gives lco's embedding."""
    assert_each_alone_equals_the_batch(twin[2], with_videos(media))


def test_packing_would_mix_items_so_it_is_refused(twin):
    name, family, embedder = twin
    batch = embedder.preprocessor(ITEMS[1:3] * 2)
    with torch.no_grad():  # items end to end in one row: the recurrence carries one item into the next
        mixed = _relative(embedder(pack_media(batch, 10_000)[0]), embedder(batch))
    assert mixed > 1e-4, mixed  # 3.7e-3 on the dense twin; exact paths agree to ~1e-7
    records = _text_records()
    loss, grads, _ = _step_result(family, name, Step(pack=False), records)
    cached_loss, cached_grads, _ = _step_result(family, name, Step(pack=False, cache_chunk=4), records)
    assert abs(float(cached_loss - loss)) <= 1e-5 * abs(float(loss)) and _relative(cached_grads, grads) <= 1e-5

    fam = get_family(family)
    for step, knob in ((Step(pack=True), "step.pack=true"), (Step(pack=False, share_prefix=True),
                                                             "step.share_prefix=true")):
        with pytest.raises(ConfigError, match=knob):
            step.setup("cpu", fam)
    auto = Step(pack="auto")
    auto.setup("cuda", fam)
    assert auto.packs is False  # auto packs on CUDA, but never this family


def test_packing_and_prefix_are_refused_before_anything_loads(tmp_path):
    cfg = compose_train(tmp_path, ["model=tiny_qwen3_5", "step.pack=true", "step.share_prefix=true"])
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert "step.pack=true cannot run on model.family=qwen3_5" in str(err.value)
    assert "step.share_prefix=true cannot run on model.family=qwen3_5" in str(err.value)
    check_config(compose_train(tmp_path, ["model=tiny_qwen3_5_moe"]))  # pack=auto, share_prefix=false: fine


def test_lora_targets_on_the_moe_twin():
    """Linear-attention projections (layer 0), attention (layer 1), the shared expert's MLP and the routed experts'
    fused weights of both layers; never the vision tower, the router or the shared expert's gate."""
    embedder = Embedder(load_backbone("qwen3_5_moe", "lco-tiny/tiny_qwen3_5_moe", dtype="float32"))
    LoRA(r=2, dropout=0.0, experts=True).apply(embedder)
    base = embedder.model.base_model
    names = set(base.targeted_module_names) | set(base.targeted_parameter_names)
    stem = "model.language_model.layers"
    expected = ({f"{stem}.0.linear_attn.{t}" for t in ("in_proj_qkv", "in_proj_z", "out_proj")}
                | {f"{stem}.1.self_attn.{t}" for t in ("q_proj", "k_proj", "v_proj", "o_proj")}
                | {f"{stem}.{i}.mlp.shared_expert.{t}" for i in (0, 1) for t in ("gate_proj", "up_proj", "down_proj")}
                | {f"{stem}.{i}.mlp.experts.{t}" for i in (0, 1) for t in ("gate_up_proj", "down_proj")})
    assert names == expected


def test_a_run_trains_lora_on_the_decoder_only(tmp_path):
    proc = run_entry("lco.train", tmp_path, "model=tiny_qwen3_5", "data=scenes_mm", "data.sources.scenes.n=32",
                     "data.sources.scene_images.n=32", "data.val_size=8", "data.batch_size=8", "trainer.max_steps=4",
                     "logger=csv", "method.r=4", env={"WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (adapter,) = tmp_path.glob("logs/train/runs/*/adapter/adapter_model.safetensors")
    tensors = load_file(str(adapter))
    moved = {k.split(".lora_B")[0].split("layers.")[1] for k, v in tensors.items()
             if "lora_B" in k and float(v.abs().max()) > 0}
    assert all(".language_model.layers." in k for k in tensors)  # no tower, no projector
    # layer 0: Gated DeltaNet's three projections + MLP; layer 1: attention + MLP; every one moved
    assert moved == ({f"0.linear_attn.{t}" for t in ("in_proj_qkv", "in_proj_z", "out_proj")}
                     | {f"1.self_attn.{t}" for t in ("q_proj", "k_proj", "v_proj", "o_proj")}
                     | {f"{i}.mlp.{t}" for i in (0, 1) for t in ("gate_proj", "up_proj", "down_proj")})
