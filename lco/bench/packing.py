"""Part (e) of ``make bench``: what padding-free packing (``step.pack``) and a shared prefix save, on each data
shape of part (b).

For every shape of ``peers.sources`` and every batch of part (b)'s records (``peer_model``, batch
``peers.batch_size``), the step's own plan counts real tokens and the tokens its forward passes compute:
padded (sides fused when padding allows), padded GradCache (chunk ``peers.chunk``, sorted and filled), and packed
into rows of each ``packing.pack_tokens`` width, without and with that GradCache chunk, and with
``step.share_prefix`` (the chat template's opening computed once per pass: ``lco/step/prefix.py``) padded and
packed. Then the hand-written step (part (a)'s ``PlainLoop``: plan, forward, loss, backward, AdamW) runs padded
and each variant in turns, step by step from the same initial weights, and the median per-step time ratio is
reported: on this machine's CPU and tiny models, attention over a packed row's masked width is a large share of
the work, which is why ``step.pack=auto`` packs on CUDA only.
"""

from __future__ import annotations

import statistics

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lco.bench.loop import PlainLoop, build, counted
from lco.bench.peers import load_records, peer_cfg
from lco.data.collate import TripletCollator


def _fraction(step, embedder, batches: list[dict]) -> float:
    """Real / computed tokens of ``batches`` under ``step``'s plan (above 1 when a shared prefix, computed once,
    stands for more tokens than the padding adds)."""
    real = computed = 0
    for batch in batches:
        tokens = step.plan(batch, embedder.pad_token_id, embedder.placeholder_ids, embedder.position_rows)["tokens"]
        real, computed = real + tokens["real"], computed + tokens["computed"]
    return real / computed


def _paired_seconds(base: DictConfig, batches: list[dict], variant: dict, device: torch.device,
                    warmup: int) -> dict:
    """Median seconds per step of the plain loop padded and with the step knobs ``variant``, stepping in turns on
    the same batches; ``speedup``: the median per-step ratio padded / variant."""
    loops = {}
    for name, knobs in (("padded", {"pack": False}), ("variant", variant)):
        embedder, method, loss_fn, _ = build(base)  # same seed: same initial LoRA
        loops[name] = PlainLoop(embedder, method, loss_fn, instantiate(base.step, **knobs), len(batches), base,
                                device)
    times = {name: [] for name in loops}
    for batch in batches:
        for name, loop in loops.items():
            times[name].append(loop.step(batch))
    padded, other = counted(times["padded"], warmup), counted(times["variant"], warmup)
    return {"padded_s": statistics.median(padded), "variant_s": statistics.median(other),
            "speedup": statistics.median(a / b for a, b in zip(padded, other))}


def part_e(cfg: DictConfig, device: torch.device) -> tuple[dict, list[str]]:
    p = cfg.peers
    shapes = {}
    for shape in p.sources:
        base = peer_cfg(cfg, shape=shape)
        embedder = build(base)[0]
        collate = TripletCollator(embedder.preprocessor)
        records = load_records(base)
        batches = [collate(records[i: i + p.batch_size]) for i in range(0, len(records), p.batch_size)]
        row = {"padded": _fraction(instantiate(base.step, pack=False), embedder, batches),
               "padded_cached": _fraction(instantiate(base.step, pack=False, cache_chunk=p.chunk), embedder, batches),
               "padded_shared": _fraction(instantiate(base.step, pack=False, share_prefix=True), embedder, batches)}
        for width in cfg.packing.pack_tokens:
            row[f"packed_{width}"] = _fraction(instantiate(base.step, pack=True, pack_tokens=width), embedder, batches)
            row[f"packed_{width}_cached"] = _fraction(
                instantiate(base.step, pack=True, pack_tokens=width, cache_chunk=p.chunk), embedder, batches)
            row[f"packed_{width}_shared"] = _fraction(
                instantiate(base.step, pack=True, pack_tokens=width, share_prefix=True), embedder, batches)
            row[f"time_{width}"] = _paired_seconds(base, batches, {"pack": True, "pack_tokens": width}, device,
                                                   p.warmup)
        row["time_shared"] = _paired_seconds(base, batches, {"pack": False, "share_prefix": True}, device, p.warmup)
        shapes[shape] = row
    widths = list(cfg.packing.pack_tokens)
    result = {"what": "real / computed tokens of the step's forward passes, and packed (or shared-prefix) vs padded "
                      "seconds per step",
              "model": peer_cfg(cfg).model.path, "batch_size": p.batch_size, "chunk": p.chunk,
              "pack_tokens": widths, "shapes": shapes}
    lines = ["## (e) Padding-free packing: real / computed tokens, and time on this machine", "",
             f"Model `{result['model']}`, part (b)'s batches ({p.batch_size} triplets, {p.steps} batches per shape). "
             "Real / computed: the share of the tokens the step's forward passes compute that are items' own "
             f"(the rest is padding), summed over the batches; GradCache chunk {p.chunk}. With a shared prefix "
             "(`step.share_prefix=true`) the chat template's opening is computed once per pass, so the figure can "
             "exceed 1: item tokens per computed token. Speed vs padded: the hand-written step (part (a)'s plain "
             "loop), the two taking turns step by step; median per-step ratio (> 1: faster than padded).", "",
             "| shape | padded | padded, GradCache | padded, shared prefix | shared prefix: speed vs padded | "
             + " | ".join(f"packed {w} | packed {w}, GradCache | packed {w}, shared prefix | packed {w}: speed vs "
                          "padded" for w in widths) + " |",
             "|---|---|---|---|---|" + "---|---|---|---|" * len(widths)]
    for shape, row in shapes.items():
        cells = [f"{row['padded']:.3f}", f"{row['padded_cached']:.3f}", f"{row['padded_shared']:.3f}",
                 f"{row['time_shared']['speedup']:.3f}x"]
        for w in widths:
            cells += [f"{row[f'packed_{w}']:.3f}", f"{row[f'packed_{w}_cached']:.3f}",
                      f"{row[f'packed_{w}_shared']:.3f}", f"{row[f'time_{w}']['speedup']:.3f}x"]
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    lines.append("")
    return result, lines
