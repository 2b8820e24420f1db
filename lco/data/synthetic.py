"""Project-made triplets about simple scenes, deterministic under a seed (no download needed).

Each scene is one object with a colour, shape, size and position. The anchor and positive describe the same
scene with two different caption templates (paraphrases); the hard negative describes a scene that differs in
exactly one attribute, so a model must read every attribute to rank the positive first. With
``image_fraction > 0`` that share of anchors is a rendered 112x112 PNG of the scene instead of a caption
(8x8 patches of 14 pixels -> 16 merged Qwen vision tokens). ``split="train"`` / ``"test"`` draws only from
the training / held-out fifth of the 320 attribute combinations (``held_out``). ``templates=k`` writes captions
with only the first k templates (less diverse text; k >= 2 so that anchor and positive differ). ``detail=k``
appends 0 to k neutral sentences (background, light, camera: nothing that tells scenes apart) to each text
anchor, so anchors run long and vary in length against short positives and negatives, the shape of All-NLI's
premises and hypotheses (``make bench`` part b measures on it; length grouping then matters).
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 180), "orange": (240, 140, 30), "black": (20, 20, 20), "white": (250, 250, 250)}
SHAPES = ["cube", "sphere", "cone", "cylinder"]
SIZES = ["small", "large"]
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
             "centre": (0.5, 0.5)}
TEMPLATES = [
    "A {size} {colour} {shape} is at the {position}.",
    "There is a {colour} {shape} on the {position} side, and it is {size}.",
    "The picture shows one {size} {shape}, coloured {colour}, placed {position}.",
    "{position} of the frame: a {colour}, {size} {shape}.",
]
DETAILS = [  # true of every scene, so they lengthen an anchor without changing which scene it describes
    "The background is plain grey.",
    "Nothing else is in the frame.",
    "The light comes from above and casts a soft shadow below the object.",
    "Its edges are sharp.",
    "The surface looks smooth and slightly glossy.",
    "The camera looks at it straight on, from a short distance, at the height of the object.",
]
ATTRIBUTES = {"colour": sorted(COLOURS), "shape": SHAPES, "size": SIZES, "position": sorted(POSITIONS)}


SPLITS = ("all", "train", "test")


def held_out(scene: dict) -> bool:
    """A fixed fifth of the 320 attribute combinations, never drawn for ``split="train"``."""
    key = "{colour}-{shape}-{size}-{position}".format(**scene)
    return zlib.crc32(key.encode()) % 5 == 0


def random_scene(rng: random.Random, split: str = "all") -> dict:
    """A scene drawn uniformly from the combinations of ``split`` (``all``, ``train`` or held-out ``test``)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS}")
    while True:
        scene = {k: rng.choice(v) for k, v in ATTRIBUTES.items()}
        if split == "all" or held_out(scene) == (split == "test"):
            return scene


def caption(scene: dict, template: str) -> str:
    return template.format(**scene).capitalize()


def render_scene(scene: dict, size: int = 112) -> Image.Image:
    """Draw ``scene`` (colour, shape, size, position) on a grey canvas of ``size`` x ``size`` pixels."""
    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    cx, cy = (int(v * size) for v in POSITIONS[scene["position"]])
    r = int(size * (0.2 if scene["size"] == "large" else 0.1))
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[scene["colour"]]
    if scene["shape"] == "cube":
        draw.rectangle(box, fill=fill)
    elif scene["shape"] == "sphere":
        draw.ellipse(box, fill=fill)
    elif scene["shape"] == "cone":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.rectangle((cx - r // 2, cy - r, cx + r // 2, cy + r), fill=fill)
    return image


class SceneTriplets:
    """``n`` triplet records drawn with ``seed``. Images (if any) are written once under ``image_dir``
    (default: the lco cache). Same interface as ``TableSource`` (``load``, ``stream``, ``describe``)."""

    def __init__(self, n: int = 2048, seed: int = 0, name: str = "scenes", image_fraction: float = 0.0,
                 image_dir: str | None = None, split: str = "all", templates: int = len(TEMPLATES), detail: int = 0):
        if not 2 <= templates <= len(TEMPLATES):
            raise ValueError(f"templates={templates}: use 2 to {len(TEMPLATES)} caption templates")
        if not isinstance(detail, int) or detail < 0:
            raise ValueError(f"detail={detail!r}: use an integer >= 0 (the most neutral sentences added to an anchor)")
        self.n, self.seed, self.name, self.image_fraction = n, seed, name, image_fraction
        self.image_dir, self.split, self.templates, self.detail = image_dir, split, TEMPLATES[:templates], detail

    def describe(self) -> str:
        extra = f", detail={self.detail}" if self.detail else ""
        return (f"{self.name}(n={self.n}, seed={self.seed}, image_fraction={self.image_fraction}, split={self.split}, "
                f"templates={len(self.templates)}{extra})")

    @property
    def num_rows(self) -> int:
        return self.n

    def _image_path(self, scene: dict) -> str:
        return scene_image_path(scene, self.image_dir)

    def stream(self, policy=None):
        rng = random.Random(f"{self.seed}-{self.name}")  # sources of one mix draw different scenes
        details = random.Random(f"{self.seed}-{self.name}-detail")  # its own stream: detail=0 changes no scene
        for index in range(self.n):
            scene = random_scene(rng, self.split)
            changed = rng.choice(sorted(ATTRIBUTES))
            other = dict(scene, **{changed: rng.choice([v for v in ATTRIBUTES[changed] if v != scene[changed]])})
            t_anchor, t_pos = rng.sample(self.templates, 2)
            t_neg = rng.choice(self.templates)
            as_image = rng.random() < self.image_fraction
            anchor = {"image": self._image_path(scene)} if as_image else {"text": caption(scene, t_anchor)}
            if self.detail and not as_image:
                extra = details.choices(DETAILS, k=details.randint(0, self.detail))
                anchor["text"] = " ".join([anchor["text"], *extra])
            yield {
                "anchor": anchor,
                "positive": {"text": caption(scene, t_pos)},
                "negatives": [{"text": caption(other, t_neg)}],
                "origin": f"{self.describe()}, row {index}",
            }

    def load(self, policy=None) -> list[dict]:
        return list(self.stream(policy))


def scene_image_path(scene: dict, image_dir: str | None = None) -> str:
    """The scene's PNG, rendered once under ``image_dir`` (default: the lco cache) and reused."""
    from lco.cache import cache_root

    folder = Path(image_dir) if image_dir else cache_root() / "scenes"
    path = folder / ("{size}_{colour}_{shape}_{position}.png".format(**scene))
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{random.getrandbits(32)}.tmp.png")
        render_scene(scene).save(tmp)
        tmp.replace(path)
    return str(path)
