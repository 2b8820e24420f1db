"""Tables of experiments/beyond/README.md from a finished ``sweep.sh``: ``python experiments/beyond/compare.py <OUT>``.

Per setting (the runs under ``<OUT>/runs`` that differ only in ``seed=``): held-out R@1 before -> after the stage
(means over seeds), and the paired difference of its *after* against the recipe's *after* with the same seed
(``lco.analysis.paired.paired_change``: per query, averaged over seeds; 95% scene-bootstrap interval; scene-level
sign-flip p-value). Then, for the mined files (``<OUT>/mined_*/seed*.jsonl``), how many attributes each mined negative
changes from its row's scene (0: a paraphrase of the positive, i.e. a false negative), against the recipe's own
one-attribute negatives. Last, Matryoshka against the recipe at 128 (all), 32 and 8 leading dimensions: each
run's saved adapter re-embeds the probe's held-out images and captions (``Embedder.encode``), cut and re-normalised
(the probe itself scores full embeddings only). Writes ``<OUT>/compare.md`` and prints it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

from lco.analysis.paired import paired_change
from lco.data.synthetic import ATTRIBUTES
from lco.evaluation.toyworld import DIRECTIONS

RECIPE = "loss.mask_duplicates=false"
COMMON = re.compile(r"^(seed|experiment|data\.sources\.scenes\.n|logger|callbacks\.|hydra\.|data\.sources\.mined\.)")


def setting(job: Path) -> str:
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    kept = [o for o in overrides if not COMMON.match(o)]
    mined = [o.split("=", 1)[1] for o in overrides if o.startswith("data.sources.mined.path=")]
    if mined:  # .../mined_m05/seed${seed}.jsonl -> the mining rule's folder
        return f"mined negatives ({Path(mined[0]).parent.name})"
    return " ".join(kept).lower()  # Hydra writes booleans as False/True


def groups(out: Path, read=lambda job: json.loads((job / "probe.json").read_text())) -> dict[str, dict[int, object]]:
    """setting -> seed -> ``read(job folder)`` (default: its probe.json)."""
    found: dict[str, dict[int, object]] = {}
    for probe in sorted((out / "runs").glob("*/probe.json")):
        seed = int(re.search(r"seed=(\d+)", probe.parent.name).group(1))
        found.setdefault(setting(probe.parent), {})[seed] = read(probe.parent)
    return found


def truncated_hits(job: Path, dims=(128, 32, 8)) -> dict[int, dict[str, list[int]]]:
    """Held-out R@1 hits of the run's adapter at each number of leading dimensions (re-normalised)."""
    import torch

    from lco.evaluation.toyworld import SceneProbe, _top1_hits
    from lco.models.loading import load_embedder

    probe = SceneProbe(split="test")
    embedder = load_embedder(job / "adapter", dtype="float32")
    img, txt = embedder.encode(probe.images), embedder.encode(probe.captions)
    scene_img = torch.arange(len(probe.scenes))
    scene_txt = scene_img.repeat(len(probe.captions) // len(probe.scenes))
    out = {}
    for k in dims:
        a, b = (torch.nn.functional.normalize(x[:, :k], dim=-1) for x in (img, txt))
        out[k] = {"i2t_r1": _top1_hits(a, b, scene_img, scene_txt), "t2i_r1": _top1_hits(b, a, scene_txt, scene_img),
                  "t2t_r1": _top1_hits(b, b, scene_txt, scene_txt, exclude_self=True)}
    return out


def matryoshka_table(out: Path) -> str:
    from lco.evaluation.toyworld import SceneProbe

    scenes = SceneProbe(split="test").query_scenes
    found = {name: runs for name, runs in groups(out, truncated_hits).items()
             if name in (RECIPE, "loss.matryoshka_dims=[128,32,8]")}
    recipe, matryoshka = found[RECIPE], found["loss.matryoshka_dims=[128,32,8]"]
    seeds = sorted(set(recipe) & set(matryoshka))
    lines = ["| dims | " + " | ".join(f"{d}: recipe / Matryoshka (difference [95% CI], p)" for d in DIRECTIONS) + " |",
             "|---" * (1 + len(DIRECTIONS)) + "|"]
    for k in (128, 32, 8):
        cells = [str(k)]
        for d in DIRECTIONS:
            r = [recipe[s][k][d] for s in seeds]
            m = [matryoshka[s][k][d] for s in seeds]
            stats = paired_change(r, m, scenes[d])
            mean = lambda runs: sum(map(sum, runs)) / sum(map(len, runs))  # noqa: E731
            cells.append(f"{mean(r):.3f} / {mean(m):.3f} ({stats['change']:+.3f} [{stats['ci_low']:+.3f}, "
                         f"{stats['ci_high']:+.3f}], p={stats['p']:.2g})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scene_of(text: str) -> dict:
    words = re.findall(r"[a-z]+", text.lower())
    return {attribute: next((w for w in words if w in values), None) for attribute, values in ATTRIBUTES.items()}


def differs(a: str, b: str) -> int:
    x, y = scene_of(a), scene_of(b)
    return sum(x[k] != y[k] for k in x)


def mined_table(out: Path) -> str:
    from lco.data.synthetic import SceneTriplets

    lines = ["| mined | seed | rows | mined: attributes changed 0 / 1 / 2 / 3+ | recipe's negatives: 0 / 1 / 2 / 3+ |",
             "|---|---|---|---|---|"]
    for path in sorted(out.glob("mined_*/seed*.jsonl")):
        seed = int(path.stem.removeprefix("seed"))
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        mined = [differs(r["positive"], n) for r in rows for n in r["negatives"]]
        recipe = [differs(r["positive"]["text"], n["text"]) for r in SceneTriplets(n=1024, seed=seed, split="train")
                  .load() for n in r["negatives"]]

        def shares(counts):
            return " / ".join(f"{sum(min(c, 3) == k for c in counts) / len(counts):.3f}" for k in range(4))

        lines.append(f"| {path.parent.name} | {seed} | {len(rows)} | {shares(mined)} | {shares(recipe)} |")
    return "\n".join(lines) + "\n"


def main(out: Path) -> str:
    found = groups(out)
    recipe = found.pop(RECIPE)
    head = ["| setting | seeds | " + " | ".join(f"{d} before -> after" for d in DIRECTIONS) + " | "
            + " | ".join(f"{d} vs recipe [95% CI], p" for d in DIRECTIONS) + " |",
            "|---" * (2 + 2 * len(DIRECTIONS)) + "|"]
    rows = []
    for name, runs in [("recipe (reference, 64 steps)", recipe), *found.items()]:
        seeds = sorted(set(runs) & set(recipe))
        cells = [name, str(len(seeds))]
        for d in DIRECTIONS:
            before = sum(runs[s]["before"][d] for s in seeds) / len(seeds)
            after = sum(runs[s]["after"][d] for s in seeds) / len(seeds)
            cells.append(f"{before:.3f} -> {after:.3f}")
        for d in DIRECTIONS:
            if runs is recipe:
                cells.append("")
                continue
            stats = paired_change([recipe[s]["hits_after"][d] for s in seeds],
                                  [runs[s]["hits_after"][d] for s in seeds], recipe[seeds[0]]["query_scenes"][d])
            cells.append(f"{stats['change']:+.3f} [{stats['ci_low']:+.3f}, {stats['ci_high']:+.3f}], "
                         f"p={stats['p']:.2g}")
        rows.append("| " + " | ".join(cells) + " |")
    text = "\n".join(head + rows) + "\n\n" + mined_table(out) + "\n" + matryoshka_table(out)
    (out / "compare.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "logs/beyond")))
