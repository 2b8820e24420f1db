"""Parts (b) and (d) of ``make bench``: lco against sentence-transformers (ST) on the same model and data.

(b) Training throughput (triplets/s): lco (``ContrastiveModule`` under Lightning, through part (a)'s ``lco_loop``)
against ST's own trainer (``SentenceTransformerTrainer`` + ``CachedMultipleNegativesRankingLoss``, GradCache with
``mini_batch_size = peers.chunk``), compared with lco's GradCache at the same chunk (``step.cache_chunk``). Like
for like: the same weights (``peer_model``, loaded
from the same folder; ST's LoRA gets lco's targets, r, alpha, dropout and lco's initial adapter tensors), the same
prompt strings (ST is fed the chat prompts lco renders; tokens, left padding and last-token pooling then agree),
the same triplets in the same order, batch, scale (1 / temperature), AdamW (lr, weight decay 0.01, no clipping),
linear warmup schedule and steps. Both read their batches in the main process and tokenize inside the step (lco
also renders the chat template there; ST gets pre-rendered strings, so that cost counts against lco and is
reported). A step is the wall time between consecutive step starts (lco: part (a)'s ``StepTimer``; ST: a
``TrainerCallback`` on ``on_step_begin``), the first ``peers.warmup`` steps are dropped, rounds alternate the
runs, and medians are reported; the ratio is triplets/s lco / triplets/s ST (issue 7's goal: >= 1.2), on each
data shape of ``peers.sources`` (All-NLI lengths, and uniform lengths: ``lco/bench/lengths.py``). The same pair
runs uncached too: ST's ``MultipleNegativesRankingLoss`` (a forward pass per column) against lco's default step
(the three sides fused into one pass when padding allows).
``tests/test_bench_peers.py`` checks that both trainers reach the same LoRA weights.

(d) Inference throughput (items/s): ``Embedder.encode(items, batch_size)`` against ``SentenceTransformer.encode(
prompts, batch_size)`` on the same base model in eval mode, alternating rounds, with the per-item cosine of the
two outputs as the like-for-like check.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import TrainerCallback

from lco.bench.loop import _sync, build, counted, lco_loop
from lco.bench.turns import take_turns
from lco.data.collate import TripletCollator
from lco.models.backbone import resolve_path
from lco.optim import effective_warmup

SIDES = ("anchor", "positive", "negative")
# part (b)'s pairs: with GradCache (cache_chunk = ST's mini-batch) or without, and (peers.share_prefix) the same
# two with lco's step.share_prefix=true
PAIRS = ("cached", "uncached", "cached_prefix", "uncached_prefix")


def _label(pair: str) -> str:
    return pair.replace("_prefix", ", shared prefix")


def peer_cfg(cfg: DictConfig, cache_chunk: int | None = None, shape: str | None = None,
             share_prefix: bool = False) -> DictConfig:
    """``cfg`` with ``model`` = ``peer_model``, ``source`` = ``peers.sources[shape]`` (default: the first),
    part (b)'s sizes, ``step.cache_chunk`` and ``step.share_prefix``."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        out.model, out.source = out.peer_model, out.peers.sources[shape or next(iter(out.peers.sources))]
        out.batch_size, out.steps = out.peers.batch_size, out.peers.steps
        out.step.cache_chunk, out.step.share_prefix = cache_chunk, share_prefix
    return out


def load_records(cfg: DictConfig) -> list[dict]:
    """Text triplets (one hard negative each), ``batch_size x steps`` of them."""
    records = instantiate(cfg.source, n=cfg.batch_size * cfg.steps).load()
    if any(len(r["negatives"]) != 1 for r in records):
        raise ValueError("part (b) compares on (anchor, positive, negative) triplets: one negative per record")
    return records


def st_columns(encoder, records: list[dict]) -> dict[str, list[str]]:
    """The exact prompt strings lco feeds the model (``Preprocessor.prompts``), one column per side."""
    return {side: encoder.prompts([r[side] if side != "negative" else r["negatives"][0] for r in records])
            for side in SIDES}


class LazyBatches(Sequence):
    """Batches collated when the DataLoader asks, so lco tokenizes inside its timed step as ST does."""

    def __init__(self, records: list[dict], collate: TripletCollator, batch_size: int):
        self.records, self.collate, self.batch_size = records, collate, batch_size

    def __len__(self) -> int:
        return len(self.records) // self.batch_size

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.collate(self.records[i * self.batch_size: (i + 1) * self.batch_size])


def st_model(cfg: DictConfig, device: torch.device):
    """A SentenceTransformer of ``cfg.model`` as lco embeds: decoder states (after the final norm), last token,
    L2 normalisation. The text modality is pinned so ST tokenizes the given prompts as they are (with a chat
    template in the folder it would otherwise wrap them in a second one)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if cfg.embed.pooling != "last" or not cfg.embed.normalize:
        raise ValueError("parts (b)/(d) match lco's reference embedding: embed.pooling=last, embed.normalize=true")
    where, hub_kwargs = resolve_path(cfg.model.path, cfg.model.get("revision"))
    hub_kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    dtype = cfg.model.dtype if cfg.model.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    text = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
    transformer = Transformer(where, model_kwargs={"dtype": getattr(torch, dtype), **hub_kwargs,
                                                   "attn_implementation": cfg.model.attn_implementation},
                              processor_kwargs=hub_kwargs, config_kwargs=hub_kwargs, modality_config=text,
                              module_output_name="token_embeddings")
    # lco pads left (as this tokenizer is saved). ST gets right padding, its best case: its cached loss trims each
    # mini-batch's trailing padding columns (with left padding it trims none). Last-token pooling reads the mask,
    # and with rotary (relative) positions where the padding sits does not change a vector.
    transformer.tokenizer.padding_side = "right"
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device=str(device))


def add_lora(st, method, lm_prefix: str, init: dict[str, torch.Tensor] | None = None) -> None:
    """lco's LoRA (same targets, r, alpha, dropout) on ST's AutoModel, optionally with lco's initial tensors.
    ST's AutoModel is the headless decoder, so lco's target regex loses its ``lm_prefix.`` heads.

    peft's ``inject_adapter_in_model`` is what ST's ``add_adapter`` calls through transformers' PEFT integration,
    minus that integration's peft version gate (transformers 5.24 asks for peft >= 0.22, which no index had on
    2026-11-30): the same LoRA modules and parameter names, base frozen, adapters trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    regex = method.target_regex(lm_prefix).replace(re.escape(lm_prefix) + r"\.", "")
    inject_adapter_in_model(LoraConfig(r=method.r, lora_alpha=method.alpha, lora_dropout=method.dropout,
                                       bias="none", target_modules=regex), st[0].auto_model)
    if init is not None:
        params = dict(st[0].auto_model.named_parameters())
        if {n for n, p in params.items() if p.requires_grad} != set(init):
            raise ValueError("ST's LoRA modules differ from lco's")
        with torch.no_grad():
            for name, tensor in init.items():
                params[name].copy_(tensor)


def lora_state(embedder) -> dict[str, torch.Tensor]:
    """lco's trainable tensors named as inside the headless decoder (ST's AutoModel names)."""
    return {n: p.detach().clone() for n, p in embedder.headless.named_parameters() if p.requires_grad}


class StepBegins(TrainerCallback):
    """ST's twin of part (a)'s ``StepTimer``: seconds between consecutive ``on_step_begin`` calls, and after the
    last step."""

    def __init__(self, device: torch.device):
        self.device, self.starts = device, []

    def on_step_begin(self, args, state, control, **kwargs):
        _sync(self.device)
        self.starts.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps:
            _sync(self.device)
            self.starts.append(time.perf_counter())

    @property
    def times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


def _in_order(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
    """ST's documented batch-sampler hook, used to read the triplets in lco's order (ST shuffles by default)."""
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import SequentialSampler

    return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last,
                               valid_label_columns=valid_label_columns, generator=generator, seed=seed)


def st_train(st, columns: dict[str, list[str]], cfg: DictConfig, scale: float, chunk: int | None,
             device: torch.device, callback: TrainerCallback | None = None) -> list[float]:
    """Train ``st`` with ST's trainer and cached MNRL (plus ``callback``); returns seconds per step."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import (CachedMultipleNegativesRankingLoss,
                                                                   MultipleNegativesRankingLoss)

    timer = StepBegins(device)
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.lr, weight_decay=0.01, optim="adamw_torch",  # torch.optim.AdamW's defaults, as lco
            lr_scheduler_type="linear", warmup_steps=effective_warmup(cfg.warmup_steps, cfg.steps), max_grad_norm=0.0,  # lco does not clip
            seed=cfg.seed, report_to="none", save_strategy="no", eval_strategy="no",
            dataloader_num_workers=0, dataloader_pin_memory=device.type == "cuda", batch_sampler=_in_order,
            use_cpu=device.type != "cuda")
        loss = (CachedMultipleNegativesRankingLoss(st, scale=scale, mini_batch_size=chunk) if chunk
                else MultipleNegativesRankingLoss(st, scale=scale))
        trainer = SentenceTransformerTrainer(model=st, args=args, train_dataset=Dataset.from_dict(columns),
                                             loss=loss, callbacks=[timer] + ([callback] if callback else []))
        trainer.train()
    return timer.times


def lco_train(cfg: DictConfig, records: list[dict], device: torch.device, callback: pl.Callback | None = None):
    """One lco run (part (a)'s ``lco_loop``, plus ``callback``) collating ``records`` live; returns (seconds per
    step, embedder)."""
    embedder, method, loss_fn, step = build(cfg)
    batches = LazyBatches(records, TripletCollator(embedder.preprocessor), cfg.batch_size)
    times = lco_loop(embedder, method, loss_fn, step, batches, cfg, "gpu" if device.type == "cuda" else "cpu",
                     extra=[callback] if callback else [])
    return times, embedder


def lco_start(cfg: DictConfig, records: list[dict]):
    """lco's starting point, as its run draws it (same seed): (embedder with LoRA, method, ST's text columns,
    scale = 1 / temperature)."""
    embedder, method, loss_fn, _ = build(cfg)
    method.apply(embedder)
    return embedder, method, st_columns(embedder.preprocessor, records), float(loss_fn.scale())


def st_run(cfg: DictConfig, start, method, columns: dict[str, list[str]], scale: float, chunk: int | None,
           device: torch.device, callback: TrainerCallback | None = None):
    """One ST run from lco's initial weights (``start``, an lco embedder); returns (seconds per step, model)."""
    st = st_model(cfg, device)
    add_lora(st, method, start.family.lm_prefix, lora_state(start))
    return st_train(st, columns, cfg, scale, chunk, device, callback), st


def render_seconds(encoder, records: list[dict], batch_size: int) -> float:
    """Seconds per batch lco spends preparing prompts (truncation check, chat template; ST gets the strings)."""
    start = time.perf_counter()
    st_columns(encoder, records)
    return (time.perf_counter() - start) * batch_size / len(records)


def _training(cfg: DictConfig, device: torch.device, shape: str) -> tuple[dict, list[str]]:
    """Part (b) on one data shape (``peers.sources[shape]``): its results and its table."""
    p = cfg.peers
    base = peer_cfg(cfg, shape=shape)
    pairs = []
    for name in PAIRS:
        shared = name.endswith("_prefix")
        if shared and not p.share_prefix:
            continue
        chunk = p.chunk if name.startswith("cached") else None
        pairs.append((name, peer_cfg(cfg, chunk, shape, shared), chunk))
    records = load_records(base)
    start, method, columns, scale = lco_start(base, records)
    rounds = []
    for _ in range(p.rounds):
        row = {}
        for name, lco_cfg, chunk in pairs:
            times = take_turns(lambda turn: lco_train(lco_cfg, records, device, turn),
                               lambda turn: st_run(base, start, method, columns, scale, chunk, device, turn), device)
            lco, st = (counted(times[who], p.warmup) for who in ("lco", "st"))
            row.update({f"lco_{name}_s": statistics.median(lco), f"st_{name}_s": statistics.median(st),
                        f"{name}_pair_ratio": statistics.median(b / a for a, b in zip(lco, st))})
            row[f"{name}_ratio"] = row[f"st_{name}_s"] / row[f"lco_{name}_s"]  # = triplets/s lco / triplets/s ST
        rounds.append(row)
    result = {"source": instantiate(base.source, n=len(records)).describe(), "rounds": rounds,
              "lco_prompt_s_per_batch": render_seconds(start.preprocessor, records[: 4 * p.batch_size], p.batch_size)}
    for key in rounds[0]:
        result[f"{key}_median"] = statistics.median(r[key] for r in rounds)
    names = [name for name, _, _ in pairs]
    for who in ("st", "lco"):
        for name in names:
            result[f"{who}_{name}_triplets_per_s"] = p.batch_size / result[f"{who}_{name}_s_median"]
    lines = [f"### {shape}: `{result['source']}`", "",
             "| round | " + " | ".join(f"ST {_label(n)} s/step | lco {_label(n)} s/step | {_label(n)}: lco / ST "
                                      "triplets/s (per-step)" for n in names) + " |",
             "|---" * (1 + 3 * len(names)) + "|"]
    lines += [f"| {i} | " + " | ".join(f"{r[f'st_{n}_s']:.4f} | {r[f'lco_{n}_s']:.4f} | {r[f'{n}_ratio']:.3f} "
                                       f"({r[f'{n}_pair_ratio']:.3f})" for n in names) + " |"
              for i, r in enumerate(rounds)]
    lines += ["", "Median ratio (triplets/s lco / ST): " + "; ".join(
        f"{_label(n)} **{result[f'{n}_ratio_median']:.3f}** (ST {result[f'st_{n}_triplets_per_s']:.1f}, lco "
        f"{result[f'lco_{n}_triplets_per_s']:.1f} triplets/s)" for n in names)
        + f". lco prepared the chat prompts in {1000 * result['lco_prompt_s_per_batch']:.1f} ms per batch.", ""]
    return result, lines


def part_b(cfg: DictConfig, device: torch.device) -> tuple[dict, list[str]]:
    p, base = cfg.peers, peer_cfg(cfg)
    shapes, tables = {}, []
    for shape in p.sources:
        shapes[shape], lines = _training(cfg, device, shape)
        tables += lines
    result = {"what": "training triplets/s, lco / sentence-transformers, both with GradCache at the same chunk "
                      "(CachedMNRL) and both without (MNRL)",
              "model": base.model.path, "batch_size": p.batch_size, "steps": p.steps, "warmup": p.warmup,
              "chunk": p.chunk, "shapes": shapes, "goal": ">= 1.2 on every data shape",
              **{f"{name}_ratio": min(r[f"{name}_ratio_median"] for r in shapes.values())
                 for name in PAIRS if f"{name}_ratio_median" in next(iter(shapes.values()))}}
    lines = ["## (b) lco vs sentence-transformers training (both with GradCache, both without)", "",
             f"Model `{base.model.path}` with LoRA r={base.method.r}, alpha={base.method.alpha} on the same modules "
             f"and the same initial adapter; batch {p.batch_size} text triplets (1 hard negative), scale "
             f"1/{base.loss.temperature:g}, AdamW lr {base.lr}, {p.steps} steps "
             f"per run (first {p.warmup} and the last not counted), on each data shape of `peers.sources`. Cached: "
             f"ST `CachedMultipleNegativesRankingLoss(mini_batch_size={p.chunk})` vs lco `step.cache_chunk={p.chunk}`; "
             "uncached: ST `MultipleNegativesRankingLoss` vs lco's default step. In each pair the trainers take turns "
             "step by step (coroutines in one thread: `lco/bench/turns.py`), so load changes hit both alike. Both "
             "tokenize inside the step; lco also prepares the chat prompts there (ST was given them). lco's cached "
             "step embeds the three sides in one pass sorted by length, in chunks filled up to the padded tokens of "
             f"{p.chunk} of the longest items (same peak activation memory, fewer passes); uncached, it fuses them "
             "when padding allows "
             f"(`step.fuse_max_padding={base.step.fuse_max_padding}`). Both pad (`step.pack={base.step.pack}` packs "
             "on CUDA only: part (e)). With `peers.share_prefix`, each pair is run again with lco's "
             "`step.share_prefix=true` (the chat template's opening computed once per pass: "
             "`lco/step/prefix.py`; ST computes it for every item).", "", *tables,
             "Smallest median ratio over the shapes: " + ", ".join(
                 f"{_label(name)} **{result[f'{name}_ratio']:.3f}**" for name in PAIRS if f"{name}_ratio" in result)
             + f" (goal {result['goal']}).", ""]
    return result, lines


def part_d(cfg: DictConfig, device: torch.device) -> tuple[dict, list[str]]:
    p = cfg.peers
    base = peer_cfg(cfg)
    embedder = build(base)[0]
    embedder.to(device).eval()
    st = st_model(base, device)
    st.eval()
    source = instantiate(base.source, n=p.encode_items).load()
    items = [r["anchor"] for r in source]
    start = time.perf_counter()
    prompts = embedder.preprocessor.prompts(items)
    prompt_s = time.perf_counter() - start  # lco's encode does this inside its timing; ST is given the prompts
    embedder.encode(items[: p.encode_batch], p.encode_batch)  # warm both once
    st.encode(prompts[: p.encode_batch], batch_size=p.encode_batch, show_progress_bar=False)
    calls = [("lco", lambda: embedder.encode(items, p.encode_batch)),
             ("st", lambda: torch.as_tensor(st.encode(prompts, batch_size=p.encode_batch, show_progress_bar=False)))]
    rounds, outputs = [], {}
    for i in range(p.encode_rounds):
        row = {}
        for name, call in calls if i % 2 == 0 else calls[::-1]:  # alternate who goes first
            _sync(device)
            start = time.perf_counter()
            outputs[name] = call().float().cpu()
            _sync(device)
            row[f"{name}_s"] = time.perf_counter() - start
        row["ratio"] = row["st_s"] / row["lco_s"]  # items/s lco / items/s ST
        rounds.append(row)
    lco_out, st_out = outputs["lco"], outputs["st"]
    cosine = torch.nn.functional.cosine_similarity(lco_out, st_out, dim=-1)
    result = {"what": "inference items/s, lco Embedder.encode / SentenceTransformer.encode", "model": base.model.path,
              "items": p.encode_items, "batch_size": p.encode_batch, "rounds": rounds,
              "lco_s_median": statistics.median(r["lco_s"] for r in rounds),
              "st_s_median": statistics.median(r["st_s"] for r in rounds),
              "ratio_median": statistics.median(r["ratio"] for r in rounds),
              "min_cosine": float(cosine.min()), "max_abs_diff": float((lco_out - st_out).abs().max()),
              "lco_prompt_s": prompt_s}
    result["lco_items_per_s"] = p.encode_items / result["lco_s_median"]
    result["st_items_per_s"] = p.encode_items / result["st_s_median"]
    lines = ["## (d) lco vs sentence-transformers embedding throughput", "",
             f"Model `{base.model.path}` (base weights, eval mode, no grad), {p.encode_items} texts, batch "
             f"{p.encode_batch}; lco `Embedder.encode(items)` prepares the chat prompts itself (truncation and "
             f"template: {prompt_s:.3f} s of its time, measured apart), ST `SentenceTransformer.encode(prompts)` is "
             "given them (last-token pooling, normalised, text modality).", "",
             "| round | lco s | ST s | lco / ST items/s |", "|---|---|---|---|"]
    lines += [f"| {i} | {r['lco_s']:.3f} | {r['st_s']:.3f} | {r['ratio']:.3f} |" for i, r in enumerate(rounds)]
    lines += ["", f"Median ratio: **{result['ratio_median']:.3f}** (lco {result['lco_items_per_s']:.0f} items/s, ST "
              f"{result['st_items_per_s']:.0f}). Same embeddings: min cosine {result['min_cosine']:.6f}, max "
              f"|difference| {result['max_abs_diff']:.2e}.", ""]
    return result, lines
