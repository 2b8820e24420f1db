"""Each method trains exactly the parameters it declares; the four-method sweep runs and reports."""

import os
import subprocess
import sys

import pytest
import torch

from lco.data.collate import TripletCollator
from lco.data.synthetic import SceneTriplets
from lco.losses import InfoNCE
from lco.methods.clip import ClipStyle
from lco.methods.full import FullFineTune
from lco.methods.linear_probe import LinearProbe
from lco.methods.lora import LoRA
from lco.models.embedder import Embedder

METHODS = {"lora": lambda: LoRA(r=4, alpha=8, dropout=0.0), "full": FullFineTune, "linear_probe": LinearProbe,
           "clip": lambda: ClipStyle(r=4, alpha=8, dropout=0.0)}
DECLARED = {  # what each method says trains, as a test on parameter names
    "lora": lambda n: ".language_model.layers." in n and ".lora_" in n,
    "full": lambda n: n.startswith("model.model.language_model."),
    "linear_probe": lambda n: n.startswith("head."),
    "clip": lambda n: (".language_model.layers." in n and ".lora_" in n) or ".visual.modules_to_save." in n,
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_exactly_the_declared_parameters_change(tiny_backbone, name):
    embedder = Embedder(tiny_backbone("tiny_omni"))
    torch.manual_seed(0)
    METHODS[name]().apply(embedder)
    trainable = {n for n, p in embedder.named_parameters() if p.requires_grad}
    assert trainable and all(DECLARED[name](n) for n in trainable), sorted(trainable)[:5]
    before = {n: p.detach().clone() for n, p in embedder.named_parameters()}
    records = SceneTriplets(n=8, image_fraction=1.0).load()  # image anchors: the vision side gets gradients
    batch = TripletCollator(embedder.preprocessor)(records)
    loss_fn = InfoNCE(symmetric=name == "clip")
    optimizer = torch.optim.AdamW([p for p in embedder.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # LoRA A moves from the second step on (B starts at zero)
        optimizer.zero_grad()
        loss_fn(embedder(batch["anchor"]), embedder(batch["positive"]), embedder(batch["negative"])).backward()
        optimizer.step()
    changed = {n for n, p in embedder.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable, (sorted(changed - trainable)[:3], sorted(trainable - changed)[:3])


def test_linear_probe_starts_as_the_base_embedding(tiny_backbone):
    base = Embedder(tiny_backbone("tiny_text")).eval()
    probed = Embedder(tiny_backbone("tiny_text")).eval()
    LinearProbe().apply(probed)
    items = ["a red cube", "a blue sphere"]
    assert torch.allclose(base.encode(items), probed.encode(items), atol=1e-6)


def test_clip_needs_a_vision_tower(tiny_backbone):
    with pytest.raises(ValueError, match="no vision tower"):
        ClipStyle().apply(Embedder(tiny_backbone("tiny_text")))


def test_sweep_over_four_methods_then_report(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "lco.train", "-m", "method=lora,full,linear_probe,clip",
                           "model=tiny_omni", "data=scenes_mm", "data.sources.scenes.n=128",
                           "data.sources.scene_images.n=128", "data.batch_size=8", "debug=fdr", "logger=none",
                           f"paths.log_dir={tmp_path}"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = tmp_path.glob("train/multiruns/*")
    from lco.report import main as report

    text = report([str(sweep), "--metric", "train/loss"]).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "method=" in line]
    assert [r.split("|")[2].strip() for r in rows] == ["method=lora", "method=full", "method=linear_probe",
                                                       "method=clip"]
    assert "device_hours" in text and (sweep / "report.png").stat().st_size > 1000


def test_local_multirun_refuses_multi_device_jobs(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lco.train", "-m", "trainer=ddp_cpu", f"paths.log_dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "re-start the whole sweep in every rank" in proc.stderr


def test_clip_under_ddp_with_text_only_batches(tmp_path):
    """method=clip trains the vision tower; a text-only batch leaves it unused, which DDP must tolerate."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "lco.train", "method=clip", "data=scenes_mm", "trainer=ddp_cpu",
                           "model=tiny_omni", "data.sources.scenes.n=96", "data.sources.scene_images.n=96",
                           "data.batch_size=4", "trainer.max_steps=6", "validate_before=false",
                           "trainer.limit_val_batches=0", "logger=none", f"paths.log_dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_lora_on_bf16_base_skips_the_fp32_input_copy_only_under_autocast():
    """peft casts a LoRA layer's bf16 input to its fp32 adapter dtype; under autocast lco's pre-hook skips that
    copy (it changes no value), and without autocast the cast stays (a bf16 x fp32 matmul would fail)."""
    from lco.methods.lora import skip_upcast_under_autocast
    from lco.models.backbone import load_backbone

    def embedder(dtype):
        torch.manual_seed(0)
        emb = Embedder(load_backbone("qwen2", "lco-tiny/tiny_text", dtype=dtype))
        LoRA(r=4, alpha=8, dropout=0.0).apply(emb)
        for name, p in emb.named_parameters():  # non-zero B: the adapters change the output
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(name)))
        return emb

    inputs = TripletCollator(embedder("float32").preprocessor)(SceneTriplets(n=4).load())["anchor"]
    assert skip_upcast_under_autocast(embedder("float32").model) == 0  # fp32 base: no hook at all
    hooked = embedder("bfloat16")
    layers = [m for m in hooked.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert len(layers) == 2 * 7 and layers[0]._forward_pre_hooks_with_kwargs  # 2 layers x 7 targets
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = hooked(inputs)
        assert not any(m.cast_input_dtype_enabled for m in layers)
        for m in layers:  # peft's own path: the input cast to fp32 first
            m._forward_pre_hooks.clear()
            m.cast_input_dtype_enabled = True
        upcast = hooked(inputs)
    assert torch.equal(fast, upcast)  # bf16 -> fp32 is exact and autocast multiplies in bf16 either way
    plain = embedder("bfloat16")
    with torch.no_grad():
        out = plain(inputs)  # no autocast: the hook leaves peft's cast on, so bf16 x fp32 adapters still work
    assert all(m.cast_input_dtype_enabled for m in plain.modules() if hasattr(m, "cast_input_dtype_enabled"))
    assert torch.isfinite(out).all()
