"""Trust nothing loaded: no code from checkpoints or models unless asked, no secrets in run folders, no data
paths outside the data root."""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lco.cli import CONF_DIR
from lco.data.sources import TableSource
from lco.errors import RecordError
from lco.security import MASK, redact
from tests.conftest import compose_train, run_entry

HF_TOKEN = "hf_SeCrEtToKeN0123456789abcdef"
WANDB_KEY = "0123456789abcdef0123456789abcdef0badc0de"


class _Payload:
    """Unpickling this would create ``marker``: what a hostile checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_code_is_refused_before_anything_loads(tmp_path):
    marker = tmp_path / "code_ran"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, hostile)
    with pytest.raises(pickle.UnpicklingError):  # the payload is real: an unrestricted load would run it
        torch.load(hostile, weights_only=True)
    done = run_entry("lco.train", tmp_path, "model=tiny_text", "data=scenes", f"ckpt_path={hostile}", "logger=none")
    assert done.returncode == 2 and not marker.exists()
    assert re.search(r"cannot resume from .*hostile\.ckpt: it does not load as a checkpoint with weights_only=True",
                     done.stderr), done.stderr[-2000:]
    assert "Loading weights" not in done.stderr  # refused before the model loaded


def test_a_pickled_adapter_is_refused(tmp_path, tiny_backbone):
    from lco.methods.lora import LoRA
    from lco.models.embedder import Embedder

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors. lco loads adapters from safetensors"):
        LoRA.load(Embedder(tiny_backbone("tiny_text")), tmp_path)


def test_remote_code_is_off_unless_asked(tmp_path):
    for path in sorted(Path(CONF_DIR, "model").glob("*.yaml")):  # each model as composed (defaults included)
        assert compose_train(tmp_path, [f"model={path.stem}"]).model.trust_remote_code is False, path.name
    source = "\n".join(p.read_text() for p in Path(CONF_DIR).parent.joinpath("lco").rglob("*.py"))
    assert "trust_remote_code=True" not in source and "allow_pickle=True" not in source
    loads = re.findall(r"torch\.load\([^)]*\)", source)
    assert loads and all("weights_only=True" in call for call in loads), loads


def test_no_secret_in_a_run_folder(tmp_path):
    """A run with a hub token and a W&B key in its environment, one of them also pasted into an override, leaves
    neither in any file of its folder: logs, config.yaml, Hydra's copies, checkpoints, adapter."""
    run_dir = tmp_path / "run"
    done = run_entry("lco.train", tmp_path, "model=tiny_text", "data=scenes", "data.sources.scenes.n=80",
                     "data.val_size=16", "data.batch_size=8", "trainer.max_steps=3",
                     "callbacks.model_checkpoint.every_n_train_steps=1", "logger=csv", f"tags=[dev,{HF_TOKEN}]",
                     f"hydra.run.dir={run_dir}", env={"HF_TOKEN": HF_TOKEN, "WANDB_API_KEY": WANDB_KEY})
    assert done.returncode == 0, done.stderr[-3000:]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".ckpt", ".safetensors", ".yaml", ".log", ".csv", ".json"} <= kinds, kinds
    for path in files:
        data = path.read_bytes()
        assert HF_TOKEN.encode() not in data and WANDB_KEY.encode() not in data, path
    assert OmegaConf.load(run_dir / "config.yaml").tags == ["dev", MASK]
    assert MASK in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_redact_masks_secret_keys_and_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "hunter2hunter2")
    cfg = {"logger": {"api_key": "anything", "project": "p"}, "model": {"path": f"x/{HF_TOKEN}", "token": None},
           "note": "pw hunter2hunter2", "n": 3}
    assert redact(cfg) == {"logger": {"api_key": MASK, "project": "p"}, "model": {"path": f"x/{MASK}", "token": None},
                           "note": f"pw {MASK}", "n": 3}


def _rows(path: Path, media: str) -> Path:
    path.write_text(json.dumps({"anchor": {"text": "a", "image_path": media}, "positive": "b"}) + "\n")
    return path


@pytest.mark.parametrize("media", ["../secret.png", "/etc/passwd", "img/../../secret.png"])
def test_data_paths_cannot_leave_the_data_root(tmp_path, media):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    path = _rows(data / "d.jsonl", media)
    with pytest.raises(RecordError, match=r"d\.jsonl, line 1: field 'anchor' names the file .* outside the data root "
                                          r".*data\.sources\.d\.allow_outside_root=true"):
        TableSource("d", path=str(path), check_media="none").load()
    records = TableSource("d", path=str(path), check_media="none", allow_outside_root=True).load()
    assert records[0]["anchor"]["image"] in (str(tmp_path / "secret.png"), "/etc/passwd")


def test_media_root_widens_the_root(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "lists").mkdir()
    path = _rows(tmp_path / "lists" / "d.jsonl", str(tmp_path / "images" / "x.png"))
    with pytest.raises(RecordError, match="outside the data root"):
        TableSource("d", path=str(path), check_media="none").load()
    records = TableSource("d", path=str(path), check_media="none", media_root=str(tmp_path / "images")).load()
    assert records[0]["anchor"]["image"] == str(tmp_path / "images" / "x.png")


def test_trust_remote_code_true_warns():
    from lco.models.backbone import load_backbone

    with pytest.warns(UserWarning, match="trust_remote_code=true: transformers will import and run Python code"):
        load_backbone("qwen2", "lco-tiny/tiny_text", dtype="float32", trust_remote_code=True)


def test_decoded_hub_audio_passes_and_hub_paths_need_a_root():
    from lco.data.records import MediaRoot, to_item

    hub = MediaRoot(None, key="data.sources.h")
    audio = {"path": "clip.wav", "array": [0.0, 0.1], "sampling_rate": 16000}  # datasets' decoded Audio
    assert to_item({"audio": audio}, "anchor", "h, row 0", hub, check="none")["audio"] is audio
    with pytest.raises(RecordError, match="outside no local data root .*data.sources.h.media_root"):
        to_item({"image_path": "img.png"}, "anchor", "h, row 0", hub, check="none")


def test_a_secret_typed_on_the_command_line_is_masked_too(tmp_path):
    """Not in the environment: a hub token pasted into an override, in a multirun (its sweep's multirun.yaml too)."""
    token = "hf_" + "Zq7" * 10
    done = subprocess.run([sys.executable, "-m", "lco.train", "-m", f"paths.log_dir={tmp_path / 'logs'}",
                           "model=tiny_text", "data=scenes", "data.sources.scenes.n=48", "data.val_size=16",
                           "data.batch_size=8", "trainer.max_steps=1", "logger=csv", f"tags=[dev,{token}]", "seed=0,1"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "logs/train/multiruns").iterdir()
    files = [p for p in sweep.rglob("*") if p.is_file()]
    assert {sweep / "0/config.yaml", sweep / "1/config.yaml", sweep / "multirun.yaml"} <= set(files)
    leaked = [p for p in files if token.encode() in p.read_bytes()]
    assert leaked == []
    assert OmegaConf.load(sweep / "0/config.yaml").tags == ["dev", MASK]
    assert OmegaConf.load(sweep / "1/.hydra/overrides.yaml")[-2:] == [f"tags=[dev,{MASK}]", "seed=1"]
