"""Project-made triplets about simple scenes, deterministic under a seed (no download needed).

Each scene is one object with a colour, shape, size and position. The anchor and positive describe the same
scene with two different caption templates (paraphrases); the hard negative describes a scene that differs in
exactly one attribute, so a model must read every attribute to rank the positive first.
"""

from __future__ import annotations

import random

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["cube", "sphere", "cone", "cylinder"]
SIZES = ["small", "large"]
POSITIONS = ["left", "right", "top", "bottom", "centre"]
TEMPLATES = [
    "A {size} {colour} {shape} is at the {position}.",
    "There is a {colour} {shape} on the {position} side, and it is {size}.",
    "The picture shows one {size} {shape}, coloured {colour}, placed {position}.",
    "{position} of the frame: a {colour}, {size} {shape}.",
]
ATTRIBUTES = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "position": POSITIONS}


class SceneTriplets:
    """``n`` triplet records drawn with ``seed``; ``load()`` returns them (the ``TableSource`` interface)."""

    def __init__(self, n: int = 2048, seed: int = 0, name: str = "scenes"):
        self.n, self.seed, self.name = n, seed, name

    def describe(self) -> str:
        return f"{self.name}(n={self.n}, seed={self.seed})"

    def load(self) -> list[dict]:
        rng = random.Random(self.seed)
        records = []
        for _ in range(self.n):
            scene = {k: rng.choice(v) for k, v in ATTRIBUTES.items()}
            changed = rng.choice(sorted(ATTRIBUTES))
            other = dict(scene, **{changed: rng.choice([v for v in ATTRIBUTES[changed] if v != scene[changed]])})
            t_anchor, t_pos = rng.sample(TEMPLATES, 2)
            t_neg = rng.choice(TEMPLATES)
            records.append({
                "anchor": {"text": t_anchor.format(**scene).capitalize()},
                "positive": {"text": t_pos.format(**scene).capitalize()},
                "negatives": [{"text": t_neg.format(**other).capitalize()}],
            })
        return records
