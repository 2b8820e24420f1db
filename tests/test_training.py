"""A short run learns, changes only LoRA weights of the decoder, and writes an adapter usable without lco."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, Qwen2_5OmniThinkerForConditionalGeneration

from lco.models.backbone import load_backbone
from lco.models.tiny import materialize
from lco.train import run
from tests.conftest import compose_train
from tests.wandb_offline import read_run


def test_short_run_learns_and_touches_only_decoder_lora(tmp_path):
    base = load_backbone("qwen2_5_omni", "lco-tiny/tiny_omni").model.state_dict()
    cfg = compose_train(tmp_path, ["model=tiny_omni", "data=scenes", "data.sources.scenes.n=640", "data.val_size=64", "data.batch_size=16", "trainer.max_epochs=1",
                                   "optim.scheduler.warmup_steps=5", "logger=none", "validate_before=true"])
    metrics, built = run(cfg)
    module = built["module"]
    losses = [float(loss) for loss in module.history["train/loss"]]
    assert len(losses) == 36
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert metrics["val/r1"] > 0.2

    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".language_model.layers." in n and ".lora_" in n for n in trainable)
    # every base weight (towers included) is bit-identical to the checkpoint it was loaded from
    hf = module.embedder.model.get_base_model()
    state = {k.replace(".base_layer", ""): v for k, v in hf.state_dict().items() if "lora_" not in k}
    for key, value in base.items():
        assert torch.equal(state[key], value), key
    assert any(k.startswith("model.visual.") for k in base) and any(k.startswith("model.audio_tower.") for k in base)

    # the adapter folder works with plain transformers + peft, giving the same embeddings
    adapter = tmp_path / "adapter"
    card = json.loads((adapter / "lco_embedding.json").read_text())
    assert card["pooling"] == "last" and card["prompt_suffixes"]["text"].endswith("in one word:")
    tok = AutoTokenizer.from_pretrained(adapter)
    plain = PeftModel.from_pretrained(Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        materialize("tiny_omni")), adapter).eval()
    texts = ["A small red cube is at the left.", "There is a blue cone on the top side, and it is large."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": t + card["prompt_suffixes"]["text"]}]}],
                                       tokenize=False, add_generation_prompt=True) for t in texts]
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(plain.get_base_model().model(**enc).last_hidden_state[:, -1], dim=-1)
    module.embedder.eval()
    ours = module.embedder.encode(texts)
    assert torch.allclose(ours, ref, atol=1e-5)

    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) <= {f"embedder.{n.split('embedder.', 1)[1]}" for n in trainable} | {"loss_fn.log_scale"}


def test_nonreentrant_checkpointing_gives_the_same_gradients(tiny_backbone):
    from lco.losses import InfoNCE
    from lco.methods.lora import LoRA
    from lco.models.embedder import Embedder

    grads = []
    for checkpointing in (False, True):
        embedder = Embedder(tiny_backbone("tiny_text"))
        torch.manual_seed(0)
        LoRA(r=4, alpha=8, dropout=0.0).apply(embedder)
        for name, p in embedder.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(len(name)))
        embedder.train()
        if checkpointing:
            embedder.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert embedder.headless.gradient_checkpointing
        items = [{"text": f"a {c} cube"} for c in ("red", "green", "blue", "black")]
        a, p = embedder(embedder.preprocessor(items)), embedder(embedder.preprocessor(items[::-1]))
        InfoNCE()(a, p).backward()
        grads.append({n: q.grad for n, q in embedder.named_parameters() if q.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_wandb_offline_writes_a_local_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_train(tmp_path, ["logger=wandb", "logger.mode=offline", "model=tiny_text", "debug=limit",
                                   "data=scenes", "data.sources.scenes.n=128", "data.batch_size=8", "validate_before=false"])
    metrics, _ = run(cfg)
    (found,) = tmp_path.rglob("offline-run-*")
    wb = read_run(found)
    # a single run is named and grouped by its task; its summary holds the final loss lco returned
    assert (wb["run"]["name"], wb["run"]["group"], wb["run"]["job_type"]) == ("train", "train", "train")
    assert wb["summary"]["after/train/loss"] == metrics["train/loss"] > 0 and wb["exit_code"] == 0
    assert wb["config"]["choices"]["model"] == "tiny_text"
    assert json.loads((tmp_path / "tracking.json").read_text())["id"] == wb["run"]["id"]


def test_a_run_shorter_than_its_warmup_warms_up_over_a_tenth():
    from lco.optim import build_scheduler, effective_warmup

    assert effective_warmup(100, 1000) == 100 and effective_warmup(100, 50) == 5 and effective_warmup(10, 5) == 1
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, total_steps=50, warmup_steps=100)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:6] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])  # peak reached after 5 warmup steps
