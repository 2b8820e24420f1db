"""The toy world's measuring stick: cross-modal and text retrieval plus geometry on held-out scenes.

``SceneProbe(split="test")`` enumerates every attribute combination of the split (53 held-out scenes), each as
one rendered image and four captions (one per template). ``probe(embedder)`` returns ``(metrics, hits)``:

- ``i2t_r1``: each image (53 queries) retrieves among all captions (212); a hit is any caption of its scene.
- ``t2i_r1``: each caption (212 queries) retrieves among the 53 images.
- ``t2t_r1``: each caption retrieves among the other 211 captions; a hit is one of its 3 paraphrases.
- ``i2t_<attribute>`` (colour, shape, size, position): the share of images whose top caption names their value
  of that attribute (where cross-modal retrieval goes wrong).
- ``alignment``: mutual-kNN alignment (``k``) of image and caption embeddings of the same scenes, averaged over
  the four templates; chance is about k / (N - 1). ``anisotropy_image`` / ``anisotropy_text``: mean cosine.
  These three are also given per decoder layer (``alignment_l<i>``...; the last index is the final norm).

``hits`` holds the per-query 0/1 outcome of each retrieval direction (lists of ints in a fixed query order;
``query_scenes`` gives each query's scene), so two measurements of the same probe can be compared query by
query (a paired test, see ``lco.analysis.paired``).
Retrieval uses the embedder's own output (head and normalisation included); geometry uses decoder states.
"""

from __future__ import annotations

import itertools

import torch

from lco.analysis.layers import layer_states
from lco.analysis.metrics import anisotropy, mutual_knn_alignment
from lco.data.synthetic import ATTRIBUTES, TEMPLATES, caption, held_out, scene_image_path

DIRECTIONS = ("i2t_r1", "t2i_r1", "t2t_r1")


def split_scenes(split: str) -> list[dict]:
    """Every attribute combination of ``split`` (``test``: the held-out fifth; ``train``; ``all``), sorted."""
    scenes = [dict(zip(ATTRIBUTES, values)) for values in itertools.product(*ATTRIBUTES.values())]
    if split == "all":
        return scenes
    return [s for s in scenes if held_out(s) == (split == "test")]


def _top1(queries: torch.Tensor, corpus: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """Index [Q] of each query's nearest corpus item by dot product (itself left out if ``exclude_self``)."""
    scores = queries.float() @ corpus.float().T
    if exclude_self:
        scores.fill_diagonal_(float("-inf"))
    return scores.argmax(dim=1)


def _top1_hits(queries: torch.Tensor, corpus: torch.Tensor, query_ids: torch.Tensor, corpus_ids: torch.Tensor,
               exclude_self: bool = False) -> list[int]:
    """Per query, 1 if its top corpus item shares its scene id, else 0. Not ``lco.analysis.retrieval.recall_at``:
    a query here has several relevant items (a scene's captions) and the paired statistics need per-query hits."""
    return (corpus_ids[_top1(queries, corpus, exclude_self)] == query_ids).int().tolist()


class SceneProbe:
    modalities = ("image", "text")  # checked against the backbone before it loads

    def __init__(self, split: str = "test", k: int = 5, batch_size: int = 32, image_dir: str | None = None):
        self.scenes = split_scenes(split)
        self.split, self.k, self.batch_size = split, k, batch_size
        self.images = [{"image": scene_image_path(s, image_dir)} for s in self.scenes]
        # captions grouped by template: [template 0 of every scene, template 1 of every scene, ...]
        self.captions = [{"text": caption(s, t)} for t in TEMPLATES for s in self.scenes]
        n = len(self.scenes)
        # the scene index of each query, per direction (a paired test resamples scenes, not queries)
        self.query_scenes = {"i2t_r1": list(range(n)), "t2i_r1": list(range(n)) * len(TEMPLATES),
                             "t2t_r1": list(range(n)) * len(TEMPLATES)}

    def __repr__(self) -> str:
        return f"SceneProbe(split={self.split}, scenes={len(self.scenes)}, k={self.k})"

    @torch.no_grad()
    def __call__(self, embedder) -> tuple[dict[str, float], dict[str, list[int]]]:
        was_training = embedder.training
        embedder.eval()
        try:
            img = embedder.encode(self.images, batch_size=self.batch_size, progress=False)
            txt = embedder.encode(self.captions, batch_size=self.batch_size, progress=False)
            img_layers = layer_states(embedder, self.images, self.batch_size)
            txt_layers = layer_states(embedder, self.captions, self.batch_size)
        finally:
            embedder.train(was_training)
        n, t = len(self.scenes), len(TEMPLATES)
        scene_of_image = torch.arange(n)
        scene_of_caption = scene_of_image.repeat(t)
        retrieved = scene_of_caption[_top1(img, txt)]  # the scene of each image's top caption
        hits = {
            "i2t_r1": (retrieved == scene_of_image).int().tolist(),
            "t2i_r1": _top1_hits(txt, img, scene_of_caption, scene_of_image),
            "t2t_r1": _top1_hits(txt, txt, scene_of_caption, scene_of_caption, exclude_self=True),
        }
        metrics = {name: sum(h) / len(h) for name, h in hits.items()}
        for attribute in ATTRIBUTES:  # which attributes the image's top caption gets right
            metrics[f"i2t_{attribute}"] = sum(self.scenes[r][attribute] == s[attribute]
                                              for r, s in zip(retrieved.tolist(), self.scenes)) / n
        last = img_layers.shape[0] - 1
        for layer in range(last + 1):
            a, c = img_layers[layer], txt_layers[layer].reshape(t, n, -1)
            geometry = {"alignment": sum(mutual_knn_alignment(a, c[j], self.k) for j in range(t)) / t,
                        "anisotropy_image": anisotropy(a), "anisotropy_text": anisotropy(txt_layers[layer])}
            for name, value in geometry.items():
                metrics[f"{name}_l{layer}"] = value
                if layer == last:
                    metrics[name] = value
        return metrics, hits
