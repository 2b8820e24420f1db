"""``python -m lco.mine input.path=<rows.jsonl> [checkpoint=<run>/adapter]``: hard-negative mining.

Order: read the input rows (any source: anchor and positive are used, existing negatives are replaced), check the
options, load the embedder (a trained folder's card, or the base ``model=``), embed the pool of candidates (the
distinct positives of all rows, every one of a row with several; by content: ``lco.data.collate.item_key``) and
the anchors, score each anchor
against the whole pool (exact cosine, ``chunk`` anchors at a time on the device), and write every row with its
``num_negatives`` mined negatives to ``out`` (JSONL, lco's ``anchor``/``positive``/``negatives`` layout; media as
absolute paths). Anchors and candidates may be of any modality: image anchors mine text candidates alike.

Which candidates are eligible for an anchor (the options of sentence-transformers' ``mine_hard_negatives``):
never one of its positives nor a candidate equal in content to its anchor; its rank among the others (0 = the
most similar) in ``[range_min, range_max)``; cosine <= ``max_score``, <= the (first) positive's cosine -
``absolute_margin``, <= that cosine x (1 - ``relative_margin``). ``sampling=top`` takes the best-ranked
eligible, ``random`` a draw seeded by ``seed`` and the row's index (so a resumed run draws the same).

Rows with fewer eligible candidates than ``num_negatives`` are left out (``short=drop``: a source needs one count of
negatives per row) or written with what they got (``short=keep``). Rows are mined and appended ``chunk`` at a time,
and ``<out>.progress.json`` records how many input rows are done and the file's size then, with a fingerprint of
the input, embedder and options: a rerun with the same command cuts off rows written after that and continues
(the pool is embedded again, the done anchors are not); another input or option refuses to append. A summary (rows, mined, short rows, mean cosines) is printed and
written to ``<out>.summary.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from lco.cli import DEVICE, entry
from lco.errors import ConfigError, RecordError


@dataclass(frozen=True)
class Window:
    """Which candidates an anchor may take as negatives (see the module docstring)."""

    num_negatives: int = 3
    range_min: int = 0
    range_max: int = 100
    max_score: float | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    sampling: str = "top"
    seed: int = 0

    def check(self) -> None:
        """Every bad option at once, as one ``ConfigError``."""
        def whole(value, low):
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        def number(value):
            return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                     and value == value and abs(value) != float("inf"))

        problems = []
        if not whole(self.num_negatives, 1):
            problems.append(f"num_negatives={self.num_negatives!r}: a whole number >= 1")
        if not whole(self.range_min, 0):
            problems.append(f"range_min={self.range_min!r}: a whole number >= 0")
        if not whole(self.range_max, 1) or (whole(self.range_min, 0) and self.range_max <= self.range_min):
            problems.append(f"range_max={self.range_max!r}: a whole number above range_min={self.range_min!r}")
        for name in ("max_score", "absolute_margin", "relative_margin"):
            if not number(getattr(self, name)):
                problems.append(f"{name}={getattr(self, name)!r}: a finite number, or null for none")
        if number(self.relative_margin) and self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            problems.append(f"relative_margin={self.relative_margin!r}: from 0 up to (not including) 1")
        if self.sampling not in ("top", "random"):
            problems.append(f"sampling={self.sampling!r}: top or random")
        if problems:
            raise ConfigError("invalid mining options: " + "; ".join(problems) + ".")


def mine(anchors: torch.Tensor, pool: torch.Tensor, positive: torch.Tensor, excluded: torch.Tensor, window: Window,
         chunk: int = 1024, first_row: int = 0) -> tuple[list[list[int]], list[list[float]], torch.Tensor]:
    """Mined negatives of each anchor: (pool indices per row, their cosines, the positives' cosines [N]).

    ``anchors`` [N, D] and ``pool`` [M, D]: unit vectors, on the device to score on; ``positive`` [N] (long):
    each row's positive in the pool (the margins' reference); ``excluded`` [N, E] (long): other pool indices the
    row never takes (equal in content to its anchor, its other positives), -1 for none. ``first_row``: the rows'
    offset in the input (seeds ``sampling=random``). Ranks break exact ties by pool index."""
    indices, scores, positives = [], [], []
    k = min(window.range_max, pool.shape[0])
    for start in range(0, anchors.shape[0], chunk):
        rows = torch.arange(start, min(start + chunk, anchors.shape[0]), device=anchors.device)
        sim = anchors[rows] @ pool.T  # [c, M] cosines
        pos = sim.gather(1, positive[rows, None]).squeeze(1)
        sim.scatter_(1, positive[rows, None], float("-inf"))
        hit = (excluded[rows] >= 0).nonzero()  # [(row in chunk, slot)]
        sim[hit[:, 0], excluded[rows][hit[:, 0], hit[:, 1]]] = float("-inf")
        top, idx = sim.topk(k, dim=1)  # then (score desc, index asc) among the k, for deterministic ties
        idx, order = idx.sort(dim=1)
        top = top.gather(1, order)
        top, order = top.sort(dim=1, descending=True, stable=True)
        idx = idx.gather(1, order)
        ok = torch.isfinite(top)
        ok[:, : window.range_min] = False
        if window.max_score is not None:
            ok &= top <= window.max_score
        if window.absolute_margin is not None:
            ok &= top <= pos[:, None] - window.absolute_margin
        if window.relative_margin is not None:
            ok &= top <= pos[:, None] * (1 - window.relative_margin)
        for r, (row_ok, row_idx, row_top) in enumerate(zip(ok.cpu(), idx.cpu(), top.cpu())):
            eligible = row_ok.nonzero().squeeze(1)
            if window.sampling == "random" and len(eligible) > window.num_negatives:
                draw = torch.Generator().manual_seed(window.seed * 1_000_003 + first_row + start + r)
                eligible = eligible[torch.randperm(len(eligible), generator=draw)[: window.num_negatives]].sort()[0]
            eligible = eligible[: window.num_negatives]
            indices.append(row_idx[eligible].tolist())
            scores.append(row_top[eligible].tolist())
        positives.append(pos.cpu())
    return indices, scores, torch.cat(positives) if positives else torch.empty(0)


def written_item(item: dict, where: str):
    """An item as a JSONL cell: its text alone, or ``{"text", "<medium>_path"}`` with media files as absolute paths
    (URLs kept); media held in memory (bytes, pixels) cannot be written and are refused."""
    from lco.data.records import MEDIA

    def path(value):
        if isinstance(value, str):
            return value if value.startswith(("http://", "https://")) else str(Path(value).resolve())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):  # a video as a list of frames
            return [path(v) for v in value]
        raise RecordError(f"{where}: a medium held in memory ({type(value).__name__}) cannot be written to a JSONL "
                          "row; mine a source whose media are files (jsonl, or parquet/hf with media paths).")

    media = {f"{kind}_path": path(item[kind]) for kind in MEDIA if item.get(kind) is not None}
    return {"text": item.get("text", ""), **media} if media else item.get("text", "")


def _fingerprint(cfg: DictConfig, window: Window, anchor_keys: list[int], positive_keys: list[list[int]]) -> str:
    """What a resumed run must share with the one that wrote ``out``: input rows (their anchors' and first
    positives' content keys), embedder, options."""
    import hashlib

    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps([str(cfg.checkpoint), str(cfg.model.get("path")), repr(window)]).encode())
    for anchor, positives in zip(anchor_keys, positive_keys):
        digest.update(f"{anchor},{positives[0]};".encode())
    return digest.hexdigest()


def _resume(out: Path, progress: Path, fingerprint: str) -> int:
    """Input rows an earlier run already mined into ``out`` (0 for a new file). Rows a cut run wrote past its last
    recorded chunk are cut off (the file is truncated to the recorded size), so none is written twice."""
    if not out.exists():
        return 0
    state = json.loads(progress.read_text()) if progress.exists() else {}
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(f"out={out} exists but was not mined from this input with this embedder and these options "
                          f"({progress.name} {'differs' if state else 'is missing'}). Choose another out= or delete "
                          "the file to start again.")
    with out.open("r+b") as handle:
        handle.truncate(int(state["bytes"]))
    return int(state["rows_done"])


def _excluded(anchor_keys: list[int], positive_keys: list[list[int]], keys: dict[int, int]) -> torch.Tensor:
    """[N, E] pool indices each row never takes: the candidate equal to its anchor and its other positives."""
    rows = [[keys[k] for k in {anchor, *positives} if k in keys] for anchor, positives in zip(anchor_keys,
                                                                                               positive_keys)]
    out = torch.full((len(rows), max(map(len, rows), default=0) or 1), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def run(cfg: DictConfig) -> dict:
    from lco.config import check_config
    from lco.data.collate import item_key
    from lco.models.embedder import configured
    from lco.models.loading import load_embedder

    check_config(cfg)
    window = Window(cfg.num_negatives, cfg.range_min, cfg.range_max, cfg.max_score, cfg.absolute_margin,
                    cfg.relative_margin, cfg.sampling, cfg.seed)
    window.check()
    for name in ("chunk", "batch_size"):
        if isinstance(cfg[name], bool) or not isinstance(cfg[name], int) or cfg[name] < 1:
            raise ConfigError(f"{name}={cfg[name]!r} is not valid: a whole number >= 1.")
    if cfg.short not in ("drop", "keep"):
        raise ConfigError(f"short={cfg.short!r} is not valid: drop (rows short of num_negatives are left out) or "
                          "keep (written with fewer negatives: such a file trains only where every row has as many).")
    records = instantiate(cfg.input).load()
    for record in records:  # every row must be writable before any work
        for item in (record["anchor"], *record.get("positives", [record["positive"]])):
            written_item(item, record["origin"])
    out = Path(cfg.out or Path(cfg.paths.output_dir) / "mined.jsonl").resolve()
    progress = Path(f"{out}.progress.json")
    # content keys, once per item: the fingerprint, the pool, each row's positive and its excluded candidates
    anchor_keys = [item_key(record["anchor"]) for record in records]
    positive_keys = [[item_key(item) for item in record.get("positives", [record["positive"]])] for record in records]
    fingerprint = _fingerprint(cfg, window, anchor_keys, positive_keys)
    done = _resume(out, progress, fingerprint)
    keys, pool_items = {}, []
    for record, row_keys in zip(records, positive_keys):
        for item, key in zip(record.get("positives", [record["positive"]]), row_keys):
            if key not in keys:
                keys[key] = len(pool_items)
                pool_items.append(item)
    embedder = load_embedder(cfg.checkpoint, device=DEVICE) if cfg.checkpoint else configured(cfg).to(DEVICE).eval()
    with torch.no_grad():
        pool = torch.nn.functional.normalize(embedder.encode(pool_items, cfg.batch_size, progress=True), dim=-1)
    pool = pool.to(DEVICE)
    out.parent.mkdir(parents=True, exist_ok=True)
    totals = {"written": 0, "mined": 0, "short": 0, "positive": 0.0, "negative": 0.0}
    for start in range(done, len(records), cfg.chunk):  # one chunk of rows: embed, mine, append, note progress
        block = records[start: start + cfg.chunk]
        with torch.no_grad():
            anchors = embedder.encode([r["anchor"] for r in block], cfg.batch_size, progress=len(block) > 1)
        anchors = torch.nn.functional.normalize(anchors, dim=-1).to(DEVICE)
        rows = slice(start, start + len(block))
        positive = torch.tensor([keys[k[0]] for k in positive_keys[rows]], dtype=torch.long, device=DEVICE)
        excluded = _excluded(anchor_keys[rows], positive_keys[rows], keys).to(DEVICE)
        indices, scores, pos = mine(anchors, pool, positive, excluded, window, cfg.chunk, first_row=start)
        with out.open("a") as handle:
            for record, picked, cosines, p in zip(block, indices, scores, pos.tolist()):
                short = len(picked) < window.num_negatives
                totals["short"] += short
                if short and cfg.short == "drop":
                    continue
                row = {"anchor": written_item(record["anchor"], record["origin"]),
                       "positive": [written_item(item, record["origin"]) for item in record["positives"]]
                       if "positives" in record else written_item(record["positive"], record["origin"])}
                row["negatives"] = [written_item(pool_items[i], record["origin"]) for i in picked]
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                totals["written"] += 1
                totals["mined"] += len(picked)
                totals["positive"] += p
                totals["negative"] += sum(cosines)
        progress.write_text(json.dumps({"fingerprint": fingerprint, "rows_done": start + len(block),
                                        "bytes": out.stat().st_size}))
    summary = {"out": str(out), "rows": len(records), "resumed_after": done, "pool": len(pool_items),
               "written": totals["written"], "mined": totals["mined"], "short": totals["short"],
               "short_rows": cfg.short,
               "mean_positive_cosine": totals["positive"] / totals["written"] if totals["written"] else None,
               "mean_negative_cosine": totals["negative"] / totals["mined"] if totals["mined"] else None}
    Path(f"{out}.summary.json").write_text(json.dumps(summary, indent=2))
    print(f"lco: mined {totals['mined']} negatives for {len(records) - done} rows (pool of {len(pool_items)} "
          f"candidates); {totals['short']} rows had fewer than {window.num_negatives} eligible "
          f"({'left out' if cfg.short == 'drop' else 'kept'}); {totals['written']} rows written to {out}\n"
          f"lco: train on them: python -m lco.train data=jsonl data.sources.jsonl.path={out} "
          "data.sources.jsonl.allow_outside_root=true   (its media paths are absolute)")
    return summary


main = entry("mine", run)


if __name__ == "__main__":
    main()
