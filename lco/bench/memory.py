"""Part (c) of ``make bench``: peak memory of one training step against the global batch, with and without GradCache.

Each point (batch size B, cache chunk or none) runs in a fresh process, so one point's high-water mark cannot
hide another's: build the model and LoRA (``loop.build``), collate B text triplets, plan them as
``ContrastiveModule`` does (fused sides, chunks), then one forward + loss + backward + AdamW step. Measured:
on CUDA ``torch.cuda.max_memory_allocated`` during the step; on CPU the process's peak resident set
(``VmHWM``, reset just before the step through ``/proc/self/clear_refs``) minus its resident set before it
(the step's own memory: activations, gradients, optimizer state) and the whole process's peak. Goal (issue 7): the cached step's peak at B=1024
within 1.3x of its peak at B=32.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import move_data_to_device

from lco.bench.loop import build
from lco.data.collate import TripletCollator
from lco.errors import ConfigError
from lco.module import ContrastiveModule


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_point(cfg: DictConfig, batch_size: int, chunk: int | None) -> dict:
    """One training step at ``batch_size`` triplets (GradCache chunk ``chunk`` items, or none); memory in MiB."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with open_dict(cfg):
        cfg.step.cache_chunk = chunk
    embedder, method, loss_fn, step = build(cfg)
    module = ContrastiveModule(embedder, method=method, loss=loss_fn, step=step,
                               optimizer=partial(torch.optim.AdamW, lr=cfg.lr), gradient_checkpointing=False,
                               max_nonfinite_skips=0).to(device)
    optimizer = module.configure_optimizers()
    records = instantiate(cfg.source, n=batch_size).load()
    batch = move_data_to_device(module.on_before_batch_transfer(TripletCollator(embedder.preprocessor)(records), 0), device)
    tokens = sum(int(p["inputs"]["attention_mask"].sum()) for p in batch["passes"])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the step cannot hide in reused memory
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident set to the current one
        before, hwm_before = _status_kib("VmRSS"), _status_kib("VmHWM")
    loss = module.batch_loss(batch)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"batch": batch_size, "chunk": chunk, "tokens": tokens, "loss": float(loss),
                "step_mib": (peak - before) / 2**20, "peak_mib": peak / 2**20, "measure": "cuda allocated"}
    hwm = _status_kib("VmHWM")
    return {"batch": batch_size, "chunk": chunk, "tokens": tokens, "loss": float(loss),
            "step_mib": (hwm - before) / 1024, "peak_mib": hwm / 1024, "measure": "CPU resident set",
            "hwm_reset": hwm_before <= before + 1024}  # False: the kernel kept the load-time peak (upper bound)


def part_c(cfg: DictConfig, device: torch.device) -> tuple[dict, list[str]]:
    """Every (batch, chunk) point of ``cfg.memory`` in its own process; returns (results, markdown lines)."""
    if not cfg.memory.chunk or len(cfg.memory.batches) < 2:
        raise ConfigError(f"bench part c needs memory.chunk (a GradCache chunk, got {cfg.memory.chunk}) and at least "
                          f"two memory.batches (got {list(cfg.memory.batches)}).")
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        OmegaConf.save(cfg, path, resolve=True)
        for chunk in (None, cfg.memory.chunk):
            for batch_size in cfg.memory.batches:
                if chunk is None and batch_size > cfg.memory.max_uncached:
                    continue
                proc = subprocess.run([sys.executable, "-m", "lco.bench.memory", str(path), str(batch_size),
                                       str(chunk)], capture_output=True, text=True, timeout=1800)
                if proc.returncode != 0:
                    raise RuntimeError(f"bench part c, batch {batch_size} chunk {chunk} failed:\n{proc.stderr[-2000:]}")
                points.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cached = {p["batch"]: p for p in points if p["chunk"] is not None}
    lo, hi = min(cached), max(cached)
    result = {"what": "memory of one training step vs global batch, with and without GradCache", "points": points,
              "cached_ratio": cached[hi]["step_mib"] / cached[lo]["step_mib"],
              "cached_peak_ratio": cached[hi]["peak_mib"] / cached[lo]["peak_mib"], "goal": "<= 1.3",
              "batches": [lo, hi]}
    lines = ["## (c) Peak memory of one training step vs global batch", "",
             f"One step (forward, loss, backward, AdamW) of `ContrastiveModule` on B text triplets (fused sides), "
             f"each point in a fresh process; GradCache chunk {cfg.memory.chunk} items. Memory: "
             f"{points[0]['measure']}; 'step' is the rise during the step over the level just before it, 'peak' "
             "the process's (or device's) peak.", "",
             "| batch | GradCache | tokens | step MiB | peak MiB |", "|---|---|---|---|---|"]
    lines += [f"| {p['batch']} | {p['chunk'] or 'off'} | {p['tokens']} | {p['step_mib']:.1f} | {p['peak_mib']:.1f} |"
              + (" (upper bound: peak not reset)" if p.get("hwm_reset") is False else "") for p in points]
    lines += ["", f"GradCache step memory at {hi} vs {lo}: **{result['cached_ratio']:.2f}x** (peak "
              f"{result['cached_peak_ratio']:.2f}x; goal {result['goal']}).", ""]
    return result, lines


if __name__ == "__main__":  # one point: python -m lco.bench.memory <config.yaml> <batch> <chunk|None>
    config, size, chunk_arg = sys.argv[1:4]
    print(json.dumps(measure_point(OmegaConf.load(config), int(size), None if chunk_arg == "None" else int(chunk_arg))))
