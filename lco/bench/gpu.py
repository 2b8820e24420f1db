"""``python -m lco.bench.gpu``: the paper's per-GPU training step at real size, with random weights (no download).

Builds the model of ``size`` (decoder and towers: the Qwen2.5-Omni thinkers, Qwen3-VL-8B, Qwen3-Omni-30B-A3B's
thinker) from the published shapes (``lco/bench/shapes.py``) in bf16 on the GPU, wraps it in lco's ``Embedder`` with
the real Qwen tokenizer and the configured method (LoRA r=64 by default), with non-reentrant gradient checkpointing
as lco.train sets it (``gradient_checkpointing=auto``: on, except under GradCache, whose chunks bound the
activations), and times lco's training step (``ContrastiveModule``'s plan + embed + InfoNCE + backward + AdamW) on
text triplets: ``lengths=allnli`` (default) draws All-NLI-shaped items (``lco/bench/lengths.py``) wrapped in the
paper's prompt and Qwen's chat template by lco's ``Preprocessor``; ``lengths=uniform`` gives every item ``seq_len``
random tokens (the earlier benchmark). Scenarios, each for every ``pack`` setting (padded, and padding-free packed
text passes: ``step.pack``) and every ``share_prefix`` setting (``step.share_prefix``: the chat template's opening
computed once per pass):

- ``per_device_batch`` triplets without GradCache (the reference: 33 per GPU), and
- ``global_batch`` triplets on this one device through GradCache, each chunk the padded tokens of one device's
  fused forward pass (``3 x per_device_batch`` items: anchors, positives, negatives), the reference's global
  1056 that it spreads over 32 GPUs (``global_batch=null`` skips it).

``quantization=nf4`` saves the random model as an HF folder under ``output_dir`` and reloads it with
``load_backbone`` in 4-bit NF4 (QLoRA, the users' path).

Reported per scenario: seconds per step, triplets/s, real (unpadded) tokens/s, real / computed tokens,
model-FLOP utilisation counted on real tokens (with a shared prefix, every item's prefix included: the work it
spared counted as done), peak memory, and the paper's text run (``paper_triplets``: 276K
triplets x 2 epochs) extrapolated to GPU-hours on this one device. Model FLOPs per real token of an item of T
tokens are ``4 N + 12 L H Q T`` (N decoder matmul parameters a token uses: an MoE token's top-k experts only;
L layers, H heads, Q head dim):
forward (2N + 4LHQT) plus the backward for activations (2N for the frozen weights, which need no weight
gradients; 8LHQT for attention, which has no weights and needs gradients for Q, K and V); recomputation
(checkpointing, GradCache's second forward) is not counted, as MFU conventionally does. ``size=dry_run`` (and
``dry_run_qwen3_vl``, ``dry_run_qwen3_omni``) builds a tiny twin on CPU so the tests run the same code.
Results: ``${output_dir}/gpu_results.{md,json}``.
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lco.bench.shapes import DRY_RUNS, model_config, model_flops_per_token, shape
from lco.cli import entry
from lco.config import check_config
from lco.errors import ConfigError
from lco.models import quantization

# dense bf16 TFLOP/s per device, matched against the device name in this order (more specific names first)
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0,
                    "L40S": 362.1}


def _backbone(cfg: DictConfig, device: torch.device):
    """The random-weight model of ``cfg.size`` (``lco/bench/shapes.py``) as a ``Backbone``, with its tiny twin's
    processor (real token ids). With ``quantization=nf4`` it is saved as an HF folder under ``output_dir`` and
    reloaded through ``load_backbone`` (the users' QLoRA path: 4-bit NF4 base)."""
    import tempfile

    import transformers

    from lco.models.backbone import Backbone, load_backbone
    from lco.models.families import get_family
    from lco.models.tiny import build_processor

    torch.manual_seed(cfg.seed)
    found, dtype = shape(cfg.size), torch.float32 if device.type == "cpu" else torch.bfloat16
    family = get_family(found.family)
    with torch.device(device):
        model = getattr(transformers, family.model_class)._from_config(
            model_config(cfg.size), dtype=dtype, attn_implementation=cfg.attn_implementation)
    processor = build_processor(found.twin)
    if cfg.quantization is None:
        return Backbone(model=model, processor=processor, family=family, path=f"random-weights:{cfg.size}")
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cfg.output_dir) as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return load_backbone(found.family, folder, dtype=str(dtype).removeprefix("torch."),
                             attn_implementation=cfg.attn_implementation,
                             quantization=cfg.quantization)


def _module(cfg: DictConfig, device: torch.device, chunk: int | None, pack: bool, share_prefix: bool = False):
    from lco.models.embedder import configured
    from lco.module import ContrastiveModule

    backbone = _backbone(cfg, device)
    with open_dict(cfg):
        cfg.step.cache_chunk, cfg.step.pack, cfg.step.share_prefix = chunk, pack, share_prefix
    module = ContrastiveModule(configured(cfg, backbone), instantiate(cfg.method), instantiate(cfg.loss),
                               instantiate(cfg.step), partial(torch.optim.AdamW, lr=1e-4),
                               gradient_checkpointing=cfg.gradient_checkpointing, max_nonfinite_skips=0,
                               compile=cfg.compile).to(device)
    module.prepare(cuda=device.type == "cuda")  # as Lightning's setup: checkpointing, compilation
    return module


def _batch(cfg: DictConfig, module, batch_size: int, step: int, generator: torch.Generator) -> dict:
    """One collated batch of ``batch_size`` triplets: All-NLI-shaped prompts (drawn per step), or random tokens."""
    if cfg.lengths == "allnli":
        from lco.bench.lengths import NliShaped
        from lco.data.collate import TripletCollator

        records = NliShaped(n=batch_size, seed=cfg.seed * 100_003 + step).load()
        return TripletCollator(module.embedder.preprocessor)(records)
    shape = (batch_size, cfg.seq_len)
    side = lambda: {"input_ids": torch.randint(0, 151000, shape, generator=generator),  # noqa: E731
                    "attention_mask": torch.ones(shape, dtype=torch.long)}
    return {"anchor": side(), "positive": side(), "negative": side(), "modality": {}}


def real_flops(text_config, lengths: list[int]) -> float:
    """Model FLOPs of a training step over items of ``lengths`` real tokens (padding not counted)."""
    return sum(n * model_flops_per_token(text_config, n) for n in lengths)


def scenario(cfg: DictConfig, device: torch.device, batch_size: int, chunk: int | None, pack: bool = False,
             share_prefix: bool = False) -> dict:
    """Time ``cfg.steps`` training steps (first ``cfg.warmup`` not counted) of one (batch, chunk, pack, shared
    prefix) setting."""
    from pytorch_lightning.utilities import move_data_to_device

    from lco.step import real_fraction

    gc.collect()  # the previous scenario's model (reference cycles) must be gone before memory is measured
    if device.type == "cuda":
        torch.cuda.empty_cache()
    module = _module(cfg, device, chunk, pack, share_prefix)
    optimizer = module.configure_optimizers()
    generator = torch.Generator().manual_seed(cfg.seed)
    times, losses, flops, tokens = [], [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    text_config = module.embedder.model.config.get_text_config()
    for i in range(cfg.steps):
        batch = _batch(cfg, module, batch_size, i, generator)
        lengths = [n for side in ("anchor", "positive", "negative")
                   for n in batch[side]["attention_mask"].sum(1).tolist()]
        planned = module.on_before_batch_transfer(batch, 0)
        batch = move_data_to_device(planned, device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = module.batch_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
        flops.append(real_flops(text_config, lengths))
        tokens.append(planned["tokens"])
    timed = slice(cfg.warmup, None)
    step, seconds = statistics.median(times[timed]), sum(times[timed])
    peak = _peak_tflops(cfg, device)
    tflops = sum(flops[timed]) / seconds / 1e12
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    triplets_per_s = batch_size * len(times[timed]) / seconds
    counts = {key: sum(t[key] for t in tokens[timed]) for key in tokens[0]}
    return {"batch": batch_size, "chunk": chunk, "packed": pack, "shared_prefix": share_prefix, "step_s": step,
            "triplets_per_s": triplets_per_s, "real_tokens_per_s": counts["real"] / seconds,
            "real_fraction": real_fraction(counts), "model_tflops_per_s": tflops,
            "mfu": tflops / peak if peak else None, "paper_gpu_hours": cfg.paper_triplets / triplets_per_s / 3600,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            "losses": losses, "parameters": params, "trainable": trainable,
            "dtype": str(next(module.embedder.model.parameters()).dtype).replace("torch.", "")}


def _peak_tflops(cfg: DictConfig, device: torch.device) -> float | None:
    if cfg.peak_tflops:
        return float(cfg.peak_tflops)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _speedups(rows: list[dict], knob: str) -> dict[str, float]:
    """Triplets/s with ``knob`` (``packed`` or ``shared_prefix``) on / off, the other knob the same, where both were
    measured: keyed by batch size (``packed``), or batch size and layout (``shared_prefix``: "33 packed")."""
    other = "shared_prefix" if knob == "packed" else "packed"
    by = {(r["batch"], r[other], r[knob]): r["triplets_per_s"] for r in rows}
    out = {}
    for batch, fixed, on in by:
        if on and (batch, fixed, False) in by and (knob == "shared_prefix" or not fixed):
            key = str(batch) if knob == "packed" else f"{batch} {'packed' if fixed else 'padded'}"
            out[key] = by[(batch, fixed, True)] / by[(batch, fixed, False)]
    return out


def _report(cfg: DictConfig, result: dict) -> list[str]:
    rows = result["scenarios"]
    base = "4-bit NF4 base, bf16 compute" if cfg.quantization else rows[0]["dtype"]
    packed = " (4-bit weights counted as stored: two per parameter)" if cfg.quantization else ""
    items = ("All-NLI-shaped items (`lco/bench/lengths.py`) in the paper's prompt and Qwen's chat template"
             if cfg.lengths == "allnli" else f"{cfg.seq_len} random tokens per item")
    lines = [f"# lco GPU benchmark ({result['when']}, {result['device']}, torch {result['torch']}, transformers "
             f"{result['transformers']}, peft {result['peft']})", "",
             f"`{cfg.size}` (family `{shape(cfg.size).family}`) from published shapes, random weights ({base}); "
             f"LoRA r={cfg.method.r}; attention `{cfg.attn_implementation}`; gradient checkpointing "
             f"`{cfg.gradient_checkpointing}` (auto: on, off under GradCache); regional torch.compile "
             f"`{cfg.compile}`; {items}, 3 items per triplet; "
             f"{rows[0]['parameters']:,} parameters{packed}, {rows[0]['trainable']:,} trainable. "
             f"Command: `python -m lco.bench.gpu {' '.join(_overrides(cfg))}`. MFU counts real (unpadded) tokens "
             f"only; GPU-hours: the paper's text run ({cfg.paper_triplets:,} triplets) at this rate on one device.",
             "", "| triplets per step | GradCache chunk | packed | shared prefix | s/step | triplets/s | real "
             "tokens/s | real / computed | model TFLOP/s | MFU | peak GiB | paper GPU-h |", "|---" * 12 + "|"]
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
        lines.append(f"| {r['batch']} | {r['chunk'] or 'off'} | {'yes' if r['packed'] else 'no'} | "
                     f"{'yes' if r['shared_prefix'] else 'no'} | "
                     f"{r['step_s']:.3f} | "
                     f"{r['triplets_per_s']:,.1f} | {r['real_tokens_per_s']:,.0f} | {r['real_fraction']:.2f} | "
                     f"{r['model_tflops_per_s']:.1f} | {mfu} | {mem} | {r['paper_gpu_hours']:.2f} |")
    if result["packing_speedup"]:
        lines += ["", "Packed / padded triplets/s: " + ", ".join(
            f"**{v:.2f}x** at {k} triplets per step" for k, v in result["packing_speedup"].items()) + "."]
    if result["prefix_speedup"]:
        lines += ["", "Shared prefix / not triplets/s: " + ", ".join(
            f"**{v:.2f}x** at {k}" for k, v in result["prefix_speedup"].items()) + "."]
    return lines


def _overrides(cfg: DictConfig) -> list[str]:
    """The command line's overrides (Hydra's record of them), or just the size when composed without Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [f"size={cfg.size}"]


def run(cfg: DictConfig) -> dict:
    check_config(cfg)
    shape(cfg.size)  # refuses an unknown size
    dry = cfg.size in DRY_RUNS
    if (problem := quantization.invalid_value(cfg.quantization)) is not None:
        raise ConfigError(problem.replace(quantization.KEY, "quantization"))
    if cfg.global_batch is not None and cfg.global_batch % cfg.per_device_batch:
        raise ConfigError(f"global_batch={cfg.global_batch} must be a multiple of per_device_batch="
                          f"{cfg.per_device_batch} (GradCache chunks of one device's triplets).")
    if cfg.steps <= cfg.warmup:
        raise ConfigError(f"steps={cfg.steps} must exceed warmup={cfg.warmup}: no step would be timed.")
    if cfg.lengths not in ("allnli", "uniform"):
        raise ConfigError(f"lengths={cfg.lengths!r}: use allnli (All-NLI-shaped prompts) or uniform (seq_len tokens).")
    if not cfg.pack or any(p not in (True, False) for p in cfg.pack):
        raise ConfigError(f"pack={list(cfg.pack) if cfg.pack else cfg.pack!r}: give a list of true/false, e.g. "
                          "[false, true] (padded, then packed text passes).")
    device = torch.device("cuda" if torch.cuda.is_available() and not dry else "cpu")
    if device.type == "cpu" and not dry:
        raise ConfigError(f"size={cfg.size} needs a CUDA GPU (none visible); use size=dry_run (or "
                          f"{', '.join(k for k in DRY_RUNS if k != 'dry_run')}) to check the script.")
    if (problem := quantization.environment_problem(cfg.quantization)) is not None:
        raise ConfigError(problem.replace(quantization.KEY, "quantization"))
    if not cfg.share_prefix or any(p not in (True, False) for p in cfg.share_prefix):
        raise ConfigError(f"share_prefix={list(cfg.share_prefix) if cfg.share_prefix else cfg.share_prefix!r}: give "
                          "a list of true/false, e.g. [false, true].")
    rows = []
    for pack in cfg.pack:
        for share in cfg.share_prefix:
            rows.append(scenario(cfg, device, cfg.per_device_batch, None, pack, share))
            if cfg.global_batch is not None:  # a chunk = the padded tokens of one device's fused pass
                rows.append(scenario(cfg, device, cfg.global_batch, 3 * cfg.per_device_batch, pack, share))
    result = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.platform(),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": _version("transformers"), "peft": _version("peft"), "size": cfg.size,
              "quantization": cfg.quantization, "compile": cfg.compile, "lengths": cfg.lengths,
              "seq_len": cfg.seq_len,
              "method": OmegaConf.to_container(cfg.method), "scenarios": rows, "peak_tflops": _peak_tflops(cfg, device),
              "paper_triplets": cfg.paper_triplets, "packing_speedup": _speedups(rows, "packed"),
              "prefix_speedup": _speedups(rows, "shared_prefix")}
    lines = _report(cfg, result)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_results.json").write_text(json.dumps(result, indent=2))
    (out / "gpu_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


main = entry("bench_gpu", run)


if __name__ == "__main__":
    main()
