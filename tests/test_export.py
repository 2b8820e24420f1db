"""lco.export: the exported folder embeds as the checkpoint it came from when loaded with plain transformers (the
card's own code, no lco), with sentence-transformers and with lco; its chat template renders lco's prompts; bad
checkpoints and a non-empty ``out`` stop with one clear error and leave nothing half-written; the CLI works."""

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import lco.export
from lco.callbacks import save_embedder
from lco.errors import ConfigError
from lco.export import export
from lco.methods import METHODS
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.models.families import FAMILIES
from lco.models.loading import load_embedder
from lco.preprocess import Preprocessor
from lco.prompts import Prompter
from tests.conftest import TINY_FAMILIES, compose_train, run_entry

TEXTS = ["A man is playing a guitar.", "Zwei Hunde rennen über ein verschneites Feld.", "", "word " * 700]
ARGS = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "clip": {"r": 4, "alpha": 8, "dropout": 0.0},
        "full": {}, "linear_probe": {"dim": 16}}
TOLERANCE = 1e-5


def make_checkpoint(folder: Path, name: str, method: str, seed: int = 0, **card) -> Path:
    """A trained-looking checkpoint: ``method`` applied to tiny twin ``name``, every trainable tensor moved by noise
    (LoRA's B away from zero, the vision tower for clip), saved by lco.train's own save function."""
    backbone = load_backbone(TINY_FAMILIES[name], f"lco-tiny/{name}", dtype="float32")
    embedder = Embedder(backbone, Preprocessor(backbone.processor, Prompter(**card)) if card else None)
    torch.manual_seed(seed)
    moe = method == "lora" and FAMILIES[TINY_FAMILIES[name]].moe  # LoRA on the routed experts' weights too
    trained = METHODS[method](**ARGS[method], **({"experts": True} if moe else {}))
    trained.apply(embedder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in embedder.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return save_embedder(embedder, trained, folder)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    made = {}

    def get(name: str, method: str) -> Path:
        if (name, method) not in made:
            made[name, method] = make_checkpoint(root / f"{name}-{method}", name, method)
        return made[name, method]

    return get


@pytest.fixture
def plain_processors(monkeypatch):
    """``AutoProcessor`` as a user has it. transformers builds the Qwen VL/Omni processors only with torchvision (their
    video processor needs it); where torchvision is missing (CI), AutoProcessor falls back to lco's assembly of the same
    processor class from the folder's own tokenizer, image processor and feature extractor, with a numpy video
    processor (lco/models/processor.py): text and images are processed alike. With torchvision nothing is patched."""
    if importlib.util.find_spec("torchvision") is not None:
        return
    from transformers import AutoProcessor

    from lco.models.processor import load_processor

    original = AutoProcessor.from_pretrained

    def from_pretrained(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except ImportError:
            kind = json.loads((Path(path) / "processor_config.json").read_text())["processor_class"]
            family = next(f for f in FAMILIES.values() if f.processor_class == kind)
            with monkeypatch.context() as inner:  # lco's loader tries AutoProcessor first: unpatched
                inner.setattr(AutoProcessor, "from_pretrained", original)
                return load_processor(str(path), family.processor_class, family.feature_extractor_class)

    monkeypatch.setattr(AutoProcessor, "from_pretrained", from_pretrained)


def card_embed(out: Path):
    """The ``embed`` function of the exported README's transformers snippet, run as written (path set to ``out``)."""
    code = re.search(r"## transformers\n\n```python\n(.*?)```", (out / "README.md").read_text(), re.S)[1]
    assert not re.search(r"^\s*(from|import) lco", code, re.M), "the transformers snippet must not need lco"
    namespace = {}
    exec(re.sub(r'^path = ".*"', f"path = {str(out)!r}", code, flags=re.M), namespace)  # noqa: S102 - the card's code
    return namespace["embed"]


def picture() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((90, 130, 3)) * 255).astype("uint8"))


def deviation(a, b) -> float:
    return float((torch.as_tensor(np.asarray(a)) - b).abs().max())


@pytest.mark.parametrize("name, method", [("tiny_text", "lora"), ("tiny_text", "full"), ("tiny_text", "linear_probe"),
                                          ("tiny_omni", "lora"), ("tiny_qwen3_vl", "lora"),
                                          ("tiny_qwen3_vl_moe", "lora"), ("tiny_qwen3_omni", "lora"),
                                          ("tiny_qwen3_5", "lora"), ("tiny_qwen3_5_moe", "lora")])
def test_export_embeds_as_the_checkpoint(tmp_path, checkpoints, plain_processors, name, method):
    from sentence_transformers import SentenceTransformer

    checkpoint = checkpoints(name, method)
    out = Path(export(checkpoint, tmp_path / "model", verify=False)["out"])
    source = load_embedder(checkpoint, dtype="float32")
    reference = source.encode(TEXTS)
    base = Embedder(load_backbone(TINY_FAMILIES[name], f"lco-tiny/{name}", dtype="float32")).eval()
    if method != "linear_probe" or ARGS[method]["dim"] == base.hidden_size:  # the training shows in the export
        assert deviation(base.encode(TEXTS), reference) > 1e-3
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "README.md", "modules.json",
            "lco_embedding.json"} <= {p.name for p in out.iterdir()}
    assert not any(p.name.endswith((".bin", ".pt", ".pth")) for p in out.rglob("*"))
    embed, st = card_embed(out), SentenceTransformer(str(out))
    found = {"transformers": deviation(embed(TEXTS), reference),
             "sentence-transformers": deviation(st.encode(TEXTS), reference),
             "lco": deviation(load_embedder(out).encode(TEXTS), reference)}
    if "image" in source.family.modalities:
        items = [{"image": picture()}, {"image": picture(), "text": TEXTS[0]}]
        images = source.encode(items)
        found["transformers, image"] = deviation(embed(["", TEXTS[0]], [picture(), picture()]), images)
        found["lco, image"] = deviation(load_embedder(out).encode(items), images)
        if importlib.util.find_spec("torchvision") is not None:  # sentence-transformers' own image path needs it
            found["sentence-transformers, image"] = deviation(st.encode(items), images)
    print(f"{name} {method}: largest deviation per loader {found}")
    assert max(found.values()) < TOLERANCE, found
    moved = out.rename(tmp_path / "moved")  # the export is self-contained: no path back to where it was written
    assert deviation(load_embedder(moved).encode(TEXTS), reference) < TOLERANCE


def test_clip_exports_the_trained_vision_tower(tmp_path, checkpoints, plain_processors):
    checkpoint = checkpoints("tiny_vl", "clip")
    out = Path(export(checkpoint, tmp_path / "model", verify=False)["out"])
    items = [{"image": picture()}, {"image": picture(), "text": TEXTS[0]}]
    reference = load_embedder(checkpoint, dtype="float32").encode(items)
    base = Embedder(load_backbone("qwen2_5_vl", "lco-tiny/tiny_vl", dtype="float32")).eval()
    assert deviation(base.encode(items), reference) > 1e-3
    assert deviation(load_embedder(out).encode(items), reference) < TOLERANCE
    assert deviation(card_embed(out)(["", TEXTS[0]], [picture(), picture()]), reference) < TOLERANCE


def test_chat_template_renders_lco_prompts_only_when_asked(tmp_path):
    from transformers import AutoTokenizer

    odd = {"text": '\n"Sum" it up \\ in {{ one }} wörd 😀:', "image": "\nImage?", "audio": "\nAudio?",
           "video": "\nVideo?", "mixed": "\nBoth?"}
    system = 'Be "brief".\nÉté.'
    checkpoint = make_checkpoint(tmp_path / "odd", "tiny_text", "lora", suffixes=odd, system=system)
    out = Path(export(checkpoint, tmp_path / "model", sentence_transformers=False, verify=False)["out"])
    assert not (out / "modules.json").exists() and json.dumps(system)[1:-1] in (out / "README.md").read_text()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.padding_side == "left"
    base = load_backbone("qwen2", "lco-tiny/tiny_text").tokenizer
    lco_prompter = Prompter(suffixes=odd, system=system)
    for text in ["plain", "", "two\nlines"]:
        turn = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        flagged, unflagged, original = (tok.apply_chat_template(turn, tokenize=False, add_generation_prompt=True, **kw)
                                        for tok, kw in [(tokenizer, {"embedding": True}), (tokenizer, {}), (base, {})])
        assert flagged == lco_prompter.render(base, {"text": text})
        assert unflagged == original  # without embedding=True: the base template


def corrupt(checkpoint: Path, tmp_path: Path, case: str) -> Path:
    """A copy of ``checkpoint`` broken in one way."""
    broken = tmp_path / case
    shutil.copytree(checkpoint, broken)
    card = broken / "lco_embedding.json"
    if case == "no card":
        card.unlink()
    elif case == "card not JSON":
        card.write_text("{not json")
    elif case == "unknown method":
        card.write_text(json.dumps({**json.loads(card.read_text()), "method": "dora"}))
    elif case == "no adapter weights":
        (broken / "adapter_model.safetensors").unlink()
    elif case == "weights cut short":
        data = (broken / "adapter_model.safetensors").read_bytes()
        (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "another base":  # the LoRA names text-model layers that the Omni thinker does not have
        card.write_text(json.dumps({**json.loads(card.read_text()), "family": "qwen2_5_omni",
                                    "base_model": "lco-tiny/tiny_omni"}))
    elif case == "wrong rank":
        path = broken / "adapter_model.safetensors"
        save_file({k: torch.cat([v, v]) if "lora_A" in k else v for k, v in load_file(str(path)).items()}, str(path))
    return broken


@pytest.mark.parametrize("case, says", [
    ("missing", "is not a folder"), ("no card", "has no lco_embedding.json"), ("card not JSON", "not valid JSON"),
    ("unknown method", "method='dora'"), ("no adapter weights", "lacks adapter_model.safetensors"),
    ("weights cut short", "cannot be read"), ("another base", "does not load onto base_model='lco-tiny/tiny_omni'"),
    ("wrong rank", "does not load onto base_model"),
])
def test_bad_checkpoints_stop_before_writing(tmp_path, checkpoints, case, says):
    broken = tmp_path / "nowhere" if case == "missing" else corrupt(checkpoints("tiny_text", "lora"), tmp_path, case)
    with pytest.raises(ConfigError, match=re.escape(says)) as err:
        export(broken, tmp_path / "model")
    assert str(broken) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "model").exists() and not list(tmp_path.glob(".model*"))


def test_out_is_refused_unless_overwrite_and_replaced_whole(tmp_path, checkpoints, monkeypatch):
    checkpoint, out = checkpoints("tiny_text", "lora"), tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists and is not empty.*overwrite=true"):
        export(checkpoint, out)
    with pytest.raises(ConfigError, match="would replace the checkpoint"):
        export(checkpoint, checkpoint, overwrite=True)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(lco.export, "write_sentence_transformers", crash)
    with pytest.raises(RuntimeError, match="disk full"):  # a crash mid-export: the old folder is untouched
        export(checkpoint, out, overwrite=True, verify=False)
    assert [p.name for p in out.iterdir()] == ["old.txt"] and not list(tmp_path.glob(".model*"))
    monkeypatch.undo()
    export(checkpoint, out, overwrite=True, verify=False)
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".model*"))


def test_cli_exports_and_reports_bad_input(tmp_path, checkpoints):
    good = run_entry("lco.export", tmp_path, f"checkpoint={checkpoints('tiny_text', 'lora')}", f"out={tmp_path / 'model'}")
    assert good.returncode == 0, good.stderr[-3000:]
    assert "largest embedding difference" in good.stdout and (tmp_path / "model" / "model.safetensors").is_file()
    bad = run_entry("lco.export", tmp_path, f"checkpoint={tmp_path / 'nowhere'}", f"out={tmp_path / 'model'}")
    assert bad.returncode == 2 and "lco: error: checkpoint=" in bad.stderr, bad.stderr[-3000:]
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_push_to_hub_stops_at_once_offline_and_uploads_the_export_online(tmp_path, checkpoints, monkeypatch):
    from huggingface_hub import HfApi

    import lco.hub

    checkpoint = checkpoints("tiny_text", "lora")
    offline = run_entry("lco.export", tmp_path, f"checkpoint={checkpoint}", f"out={tmp_path / 'model'}",
                        "push_to_hub=me/lco-text")
    assert offline.returncode == 2, offline.stderr[-3000:]
    assert ("lco: error: push_to_hub=me/lco-text: the Hugging Face hub cannot be reached" in offline.stderr
            and "hf upload me/lco-text <out>" in offline.stderr and "Traceback" not in offline.stderr)
    assert not (tmp_path / "model").exists()  # stopped before the export
    with pytest.raises(ConfigError, match="is not a hub repo id"):
        lco.hub.check_push("not a/repo id")

    calls = []  # online (the hub is not reachable here): what HfApi is asked to do with the exported folder
    monkeypatch.setattr(lco.hub, "hub_reachable", lambda: True)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    cfg = compose_train(tmp_path, [f"checkpoint={checkpoint}", f"out={tmp_path / 'pushed'}", "push_to_hub=me/lco-text",
                                   "verify=false"], config_name="export")
    result = lco.export.run(cfg)
    assert calls[0] == ("create", "me/lco-text", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1][0] == "upload" and calls[1][1]["folder_path"] == str(tmp_path / "pushed")
    assert calls[1][1]["repo_id"] == "me/lco-text" and result["url"].endswith("/me/lco-text")
    assert (tmp_path / "pushed" / "model.safetensors").is_file()
