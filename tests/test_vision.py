"""With torchvision (``make test-vision``): the processors users of the Qwen VL/Omni families run.

transformers builds these processors (fast image processor, ``Qwen2VLVideoProcessor``) only with torchvision. CI's
CPU torch has no torchvision that imports, so lco assembles the same processor class from the folder's parts
(``lco.models.processor.assemble_from``: PIL image processor, ``FramesVideoProcessor``). Here both are built from
the same tiny twin folder and compared on the same items: token ids, grids and masks must be equal; pixel values
and embeddings are compared with tolerances measured on these items (PIL's bicubic vs torchvision's). Marked
``vision``; skipped where torchvision does not import.
"""

import dataclasses

import numpy as np
import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from lco.models.backbone import load_backbone  # noqa: E402
from lco.models.embedder import Embedder  # noqa: E402
from lco.models.processor import FramesVideoProcessor, assemble_from  # noqa: E402
from lco.models.tiny import materialize  # noqa: E402
from tests.conftest import TINY_FAMILIES  # noqa: E402
from tests.media_fixtures import write_media  # noqa: E402

pytestmark = pytest.mark.vision
# Measured on these items (make test-vision, 2026-11-30, transformers 5.24, torch 2.14.1, torchvision 0.29.1):
# images: largest pixel difference 0.341, mean 0.0009 (CLIP-normalised units; 1/255 is about 0.015), from
# torchvision's antialiased bicubic resize vs PIL's bicubic; embeddings 1.1e-3 (VL) and 6.6e-4 (Omni) apart.
# Video frames (resized alike) 1.8e-7, audio features 0. Token ids, masks and grids are equal.
# Qwen3 twins (2026-12-01, same versions): images 0.18 / 6.4e-4 (mean 0.5 / std 0.5 units), embeddings 1.4e-3
# (Qwen3-VL) and 1.1e-3 (Qwen3-Omni); video frames 5.9e-8 (Qwen3-VL) and 7.8e-3 (Qwen3-Omni, 64-pixel frames
# enlarged to 384: one value 2/255 apart), video embeddings 5.4e-7 and 6.0e-6; Qwen3-VL's frame times in the
# token ids are equal.
PIXEL_MAX, PIXEL_MEAN = 0.5, 0.02
EMBED_TOLERANCE = 5e-3  # after L2 normalisation, random-weight tiny twins


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return root, write_media(root)


def pair(name: str) -> tuple[Embedder, Embedder]:
    """The twin with ``AutoProcessor``'s torchvision build, and the same model with lco's assembly."""
    backbone = load_backbone(TINY_FAMILIES[name], f"lco-tiny/{name}", dtype="float32")
    assert not isinstance(backbone.processor.video_processor, FramesVideoProcessor)
    family = backbone.family
    assembled = assemble_from(str(materialize(name)), family.processor_class, family.feature_extractor_class)
    assert type(assembled) is type(backbone.processor)
    return Embedder(backbone).eval(), Embedder(dataclasses.replace(backbone, processor=assembled)).eval()


def odd_picture(seed: int, size: tuple[int, int]):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("name", ["tiny_vl", "tiny_omni", "tiny_qwen3_vl", "tiny_qwen3_omni"])
def test_lco_assembly_equals_the_torchvision_processor(name, media):
    """Qwen3-VL: lco's frames go to ``Qwen3VLVideoProcessor`` with their metadata and ``do_sample_frames=False``,
    so both write the same frame times; Qwen3-Omni's is ``Qwen2VLVideoProcessor`` with 16-pixel patches."""
    root, files = media
    real, ours = pair(name)
    batches = {
        "image": [{"image": str(root / f)} for f in files["image"]]
        + [{"text": "Look:", "image": odd_picture(0, (90, 130))}, {"image": odd_picture(1, (333, 57))}],
        "video": [{"video": str(root / files["video"][0])}, {"video": str(root / files["mp4"][0])}],
    }
    if "audio" in real.family.modalities:
        batches["audio"] = [{"audio": str(root / f)} for f in files["audio"]]
    found = {}
    for kind, items in batches.items():
        a, b = real.preprocessor(items), ours.preprocessor(items)
        assert a.keys() == b.keys(), kind
        for key in a:
            if a[key].dtype.is_floating_point:
                assert a[key].shape == b[key].shape, (kind, key)
                found[f"{kind}: {key}"] = float((a[key] - b[key]).abs().max())
                found[f"{kind}: {key} (mean)"] = float((a[key] - b[key]).abs().mean())
            else:  # token ids (so the count of media tokens), masks, grids: exactly equal
                assert torch.equal(a[key], b[key]), (kind, key)
        with torch.no_grad():
            found[f"{kind}: embedding"] = float((real(a) - ours(b)).abs().max())
    print(f"{name}: largest deviation, torchvision processor vs lco's assembly: {found}")
    assert max(v for k, v in found.items() if k.endswith("embedding")) < EMBED_TOLERANCE, found
    assert max(v for k, v in found.items() if "embedding" not in k and "mean" not in k) < PIXEL_MAX, found
    assert max(v for k, v in found.items() if k.endswith("(mean)")) < PIXEL_MEAN, found


@pytest.mark.parametrize("name", ["tiny_vl", "tiny_omni"])
def test_sentence_transformers_loads_a_vl_or_omni_export_unpatched(name, tmp_path):
    """What failed without torchvision (ImportError for ``Qwen2VLVideoProcessor``): plain
    ``SentenceTransformer(folder)`` on an export embeds texts and images as lco does."""
    from sentence_transformers import SentenceTransformer

    from lco.export import export
    from lco.models.loading import load_embedder
    from tests.test_export import TEXTS, TOLERANCE, deviation, make_checkpoint, picture

    checkpoint = make_checkpoint(tmp_path / "checkpoint", name, "lora")
    out = export(checkpoint, tmp_path / "model", verify=False)["out"]
    source = load_embedder(checkpoint, dtype="float32")
    st = SentenceTransformer(out)  # no lco code on this path
    items = [{"image": picture()}, {"image": picture(), "text": TEXTS[0]}]
    found = {"text": deviation(st.encode(TEXTS[:3]), source.encode(TEXTS[:3])),
             "image": deviation(st.encode(items), source.encode(items))}
    print(f"{name}: sentence-transformers vs lco on the export: {found}")
    assert max(found.values()) < TOLERANCE, found
