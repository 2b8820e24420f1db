"""``lco/card.py``: the card a run writes holds the embedder's preprocessing and pooling, reads back checked, and
rebuilds an embedder that embeds exactly as the one it describes; a bad card stops with one ``ConfigError``
naming the folder and what is wrong."""

import json

import pytest
import torch

from lco import card
from lco.errors import ConfigError
from lco.methods.lora import LoRA
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.preprocess import Preprocessor
from lco.prompts import Prompter

SUFFIXES = {"text": " [t]", "image": " [i]", "audio": " [a]", "video": " [v]", "mixed": " [m]"}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    backbone = load_backbone("qwen2", "lco-tiny/tiny_text", dtype="float32")
    preprocessor = Preprocessor(backbone.processor, Prompter(suffixes=SUFFIXES, system="Embed."), max_text_tokens=9,
                                image_max_size=56)
    embedder = Embedder(backbone, preprocessor, pooling="mean", normalize=False)
    method = LoRA(r=2, alpha=4)
    folder = tmp_path_factory.mktemp("adapter")
    card.write(folder, card.build(embedder, method))
    return embedder, folder


def test_the_card_holds_what_embedding_needs_and_reads_back(written):
    embedder, folder = written
    read = card.read(folder)
    assert read == json.loads((folder / card.NAME).read_text())
    assert {k: read[k] for k in ("method", "family", "base_model", "pooling", "normalize", "max_text_tokens",
                                 "image_max_size", "audio_max_seconds", "video_max_frames", "system_prompt",
                                 "padding_side")} == {
        "method": "lora", "family": "qwen2", "base_model": "lco-tiny/tiny_text", "pooling": "mean", "normalize": False,
        "max_text_tokens": 9, "image_max_size": 56, "audio_max_seconds": 30.0, "video_max_frames": 16,
        "system_prompt": "Embed.", "padding_side": "left"}
    assert read["prompt_suffixes"] == SUFFIXES and read["provenance"]["base_model"] == embedder.backbone.source


def test_the_embedder_a_card_describes_embeds_as_the_original(written):
    embedder, folder = written
    rebuilt = card.embedder(card.read(folder), "lco-tiny/tiny_text", dtype="float32")
    assert rebuilt.card() == embedder.card()
    items = [{"text": "a red cube on the left of a long sentence that the nine-token limit cuts"}, {"text": "hi"}]
    assert torch.equal(rebuilt.preprocessor(items)["input_ids"], embedder.preprocessor(items)["input_ids"])
    assert torch.allclose(rebuilt.eval().encode(items), embedder.eval().encode(items), atol=0)


@pytest.mark.parametrize("damage,message", [
    (lambda f: (f / card.NAME).unlink(), "has no lco_embedding.json: point at the adapter/ folder"),
    (lambda f: (f / card.NAME).write_text("{not json"), "lco_embedding.json is not valid JSON"),
    (lambda f: (f / card.NAME).write_text("[1, 2]"), "lco_embedding.json holds list, not a JSON object"),
    (lambda f: (f / card.NAME).write_text(json.dumps({"method": "lora", "family": "qwen2"})),
     "lacks ['base_model', 'pooling', 'normalize', 'max_text_tokens', 'prompt_suffixes']; it was not written by lco"),
    (lambda f: (f / card.NAME).write_text(json.dumps({**json.loads((f / card.NAME).read_text()), "method": "dora"})),
     "has method='dora'; lco knows clip, full, linear_probe, lora"),
])
def test_a_bad_card_names_the_folder_and_the_fix(written, tmp_path, damage, message):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(written[1], folder)
    damage(folder)
    with pytest.raises(ConfigError) as err:
        card.read(folder, f"checkpoint={folder}")
    assert str(err.value).startswith(f"checkpoint={folder}") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"adapter {tmp_path / 'gone'} is not a folder"):
        card.read(tmp_path / "gone", f"adapter {tmp_path / 'gone'}")
