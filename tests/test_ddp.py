"""2 processes (gloo) == 1 process on the same global batch: loss and LoRA gradients, with hard negatives."""

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from lco.data.synthetic import SceneTriplets
from lco.losses import InfoNCE
from lco.methods.lora import LoRA
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder

GLOBAL_BATCH = 8


def _lora_embedder():
    """The tiny text twin with LoRA (r 4, alpha 8, no dropout) seeded as every test here starts it."""
    embedder = Embedder(load_backbone("qwen2", "lco-tiny/tiny_text"))
    torch.manual_seed(0)
    LoRA(r=4, alpha=8, dropout=0.0).apply(embedder)
    return embedder


def _loss_and_grads(records, rank=0, world=1):
    embedder = _lora_embedder()
    for name, p in embedder.named_parameters():  # LoRA B starts at zero: give it values so A gets gradients too
        if "lora_B" in name:
            with torch.no_grad():
                p.copy_(torch.randn_like(p, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    share = GLOBAL_BATCH // world
    local = records[rank * share:(rank + 1) * share]
    batch = {k: embedder.preprocessor([r[k] if k != "negatives" else r[k][0] for r in local]) for k in ("anchor", "positive", "negatives")}
    loss = InfoNCE(temperature=0.05)(embedder(batch["anchor"]), embedder(batch["positive"]), embedder(batch["negatives"]))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.requires_grad}
    if world > 1:  # what DDP does: average gradients over ranks
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        dist.all_reduce(loss := loss.detach().clone())
        loss /= world
    return loss.detach(), grads


def _worker(rank, world, records, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    loss, grads = _loss_and_grads(records, rank, world)
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, out)
    dist.destroy_process_group()


def test_two_ranks_match_one_rank_with_hard_negatives(tmp_path):
    records = SceneTriplets(n=GLOBAL_BATCH, seed=5).load()
    single_loss, single_grads = _loss_and_grads(records)
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, records, str(out), 29500 + os.getpid() % 1000), nprocs=2, join=True)
    ddp = torch.load(out)
    assert torch.allclose(ddp["loss"], single_loss, atol=1e-5)
    assert single_grads.keys() == ddp["grads"].keys()
    for name, grad in single_grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(ddp["grads"][name], grad, atol=1e-5, rtol=1e-4), name


def test_wrong_labels_would_be_caught():
    """Sanity check of the test's power: mislabelled candidates change the loss."""
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    p, n = a + 0.01, torch.randn(4, 8)
    good = InfoNCE(temperature=0.05)(a, p, n)
    shuffled = InfoNCE(temperature=0.05)(a, torch.roll(p, 1, 0), n)
    assert shuffled > good + 1.0


def _train_one_step(tmp_path, trainer: str, batch_size: int, extra: tuple[str, ...] = (), steps: int = 1,
                    output: list[str] | None = None, model: str = "tiny_omni") -> dict:
    """``steps`` SGD steps (lr 1, no dropout) through `python -m lco.train`; returns the adapter tensors (and
    appends the run's console output to ``output`` if given)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([
        sys.executable, "-m", "lco.train", f"trainer={trainer}", f"model={model}", "logger=csv",
        "data.sources.scenes.n=80", f"data.batch_size={batch_size}", "method.dropout=0.0",
        "optim.optimizer._target_=torch.optim.SGD", "~optim.optimizer.betas", "optim.optimizer.lr=1.0",
        "optim.scheduler.warmup_steps=0", f"trainer.max_steps={steps}", "validate_before=false",
        "trainer.limit_val_batches=0", f"paths.log_dir={tmp_path}", *extra], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if output is not None:
        output.append(proc.stdout + proc.stderr)
    (adapter,) = tmp_path.glob("train/runs/*/adapter/adapter_model.safetensors")
    return load_file(str(adapter))


def test_lightning_ddp_cpu_step_equals_single_process_step(tmp_path):
    """The whole `trainer=ddp_cpu` path on the Qwen3-VL MoE twin with LoRA on the routed experts too (the vision
    tower frozen): each rank routes its own tokens, so an expert may see tokens on one rank only, but its LoRA (one
    fused A/B for all experts) gets a gradient on every rank; after one step the LoRA weights equal those of one
    process fed the same global batch of 8 triplets (4 per rank). The GradCache tests below run the Omni twin."""
    moe = dict(extra=("method.experts=true",), model="tiny_qwen3_vl_moe")
    single = _train_one_step(tmp_path / "one", "cpu", 8, **moe)
    ddp = _train_one_step(tmp_path / "two", "ddp_cpu", 4, **moe)
    assert single.keys() == ddp.keys() and any(".mlp.experts.lora_B" in k for k in single)
    moved = [k for k in single if "lora_B" in k and single[k].abs().sum() > 0]
    assert len(moved) == len([k for k in single if "lora_B" in k]), "every LoRA B must have been updated"
    for key, value in single.items():
        assert torch.allclose(ddp[key], value, atol=1e-5, rtol=1e-4), key


@pytest.mark.parametrize("step", [("step.cache_chunk=3",), ("step.pack=true", "step.cache_tokens=96"),
                                  ("step.pack=true", "step.cache_tokens=96", "step.share_prefix=true")],
                         ids=["items", "packed-tokens", "packed-tokens-shared-prefix"])
def test_gradcache_under_ddp_equals_single_process_without_cache(tmp_path, step):
    """GradCache (chunks of 3 items, so chunks straddle sides; or packed rows in chunks of 96 tokens, also behind a
    shared prefix computed once per pass) on 2 gloo ranks for 2 steps: each LoRA weight gets the sum over chunks
    once per backward, DDP averages it, and the weights equal one uncached, padded process.
    Two SGD steps at lr 1 amplify float noise (measured: plain 2-rank DDP differs from one process by 2.5e-5 of
    a tensor's largest entry, GradCache DDP by 3.8e-5), hence the bound of 1e-4 of the largest entry."""
    single = _train_one_step(tmp_path / "one", "cpu", 8, steps=2)
    cached = _train_one_step(tmp_path / "two", "ddp_cpu", 4, step, steps=2)
    assert single.keys() == cached.keys()
    for key, value in single.items():
        assert float((cached[key] - value).abs().max()) <= 1e-4 * float(value.abs().max()), key


CLIP, LR, STEPS = 0.5, 0.05, 3  # max norm of the reference's rank-averaged gradient (its norms: 0.44, 1.7, 2.9); AdamW lr


def _reference_worker(rank, world, records, out, port, clip=CLIP):
    """The reference's step (FIELD_NOTES section 2), re-implemented: every rank gathers all embeddings without
    autograd and puts its own slice back, computes the global-batch loss, DDP averages the gradients (so each is
    1/world of the full-batch gradient), the HF Trainer clips that at max_grad_norm, AdamW steps."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    embedder = _lora_embedder()
    params = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    loss_fn, share = InfoNCE(temperature=0.05, gather=False), GLOBAL_BATCH // world
    norms = []
    for step in range(len(records) // GLOBAL_BATCH):
        local = records[step * GLOBAL_BATCH + rank * share: step * GLOBAL_BATCH + (rank + 1) * share]
        sides = []
        for key in ("anchor", "positive", "negatives"):
            mine = embedder(embedder.preprocessor([r[key] if key != "negatives" else r[key][0] for r in local]))
            everyone = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(everyone, mine.detach())
            everyone[rank] = mine
            sides.append(torch.cat(everyone))
        optimizer.zero_grad()
        loss_fn(*sides).backward()
        for p in params:
            dist.all_reduce(p.grad)
            p.grad /= world
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, clip)))
        optimizer.step()
    if rank == 0:
        torch.save({"weights": {n: p.detach().clone() for n, p in embedder.named_parameters() if p.requires_grad},
                    "norms": norms}, out)
    dist.destroy_process_group()


def _lco_steps(records, clip: float, eps: float = 1e-8) -> dict:
    """lco's own step (ContrastiveModule under a Lightning Trainer, one process, the global batches whole) with
    ``trainer.gradient_clip_val=clip``."""
    from functools import partial

    import pytorch_lightning as pl

    from lco.data.collate import TripletCollator
    from lco.module import ContrastiveModule
    from lco.step import Step

    embedder = Embedder(load_backbone("qwen2", "lco-tiny/tiny_text"))
    torch.manual_seed(0)  # the module puts LoRA on: initialised as the reference's
    module = ContrastiveModule(embedder, LoRA(r=4, alpha=8, dropout=0.0), InfoNCE(temperature=0.05), Step(pack=False),
                               partial(torch.optim.AdamW, lr=LR, eps=eps), gradient_checkpointing=False,
                               max_nonfinite_skips=0)
    collate = TripletCollator(embedder.preprocessor)
    batches = [collate(records[i * GLOBAL_BATCH:(i + 1) * GLOBAL_BATCH]) for i in range(STEPS)]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, gradient_clip_val=clip, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return {n: p.detach().clone() for n, p in embedder.named_parameters() if p.requires_grad}


def test_the_reference_step_is_world_times_its_clip_and_eps_on_lcos_gradient(tmp_path):
    """The reference's rank-averaged gradient is 1/world of the full-batch gradient lco computes, and both its clip
    (max_grad_norm) and AdamW's eps act on that smaller gradient. So ``trainer.gradient_clip_val`` = world x its clip
    with ``optim.optimizer.eps`` = world x its eps gives its updates exactly (Adam then sees the gradient, the clip and
    the eps scaled alike). 2 gloo ranks, 3 AdamW steps, the reference clipping steps 2 and 3 but not 1. Scaling only
    the clip is not enough: Adam's eps outweighs the tiny gradients LoRA A gets while B is near zero."""
    records = SceneTriplets(n=GLOBAL_BATCH * STEPS, seed=7).load()
    out = tmp_path / "reference.pt"
    mp.spawn(_reference_worker, args=(2, records, str(out), 29500 + (os.getpid() + 7) % 1000), nprocs=2, join=True)
    reference = torch.load(out)
    assert reference["norms"][0] < CLIP < min(reference["norms"][1:])  # unclipped, then clipped

    def deviation(weights: dict) -> float:  # the largest change of a tensor, relative to its largest entry
        return max(float((weights[k] - v).abs().max() / v.abs().max()) for k, v in reference["weights"].items())

    assert deviation(_lco_steps(records, clip=2 * CLIP, eps=2e-8)) < 1e-3  # measured 3.1e-4: float noise of Adam
    assert deviation(_lco_steps(records, clip=CLIP)) > 0.1  # the reference's numbers taken as they are: 0.34
    assert deviation(_lco_steps(records, clip=2 * CLIP)) > 0.1  # the clip scaled, eps not: 0.28
