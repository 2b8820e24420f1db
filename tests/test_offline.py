"""Real checkpoints and hub datasets, offline: fail fast, name the model and the key to set."""

import os
import subprocess
import sys
import time

import pytest

from lco.data.sources import TableSource
from lco.errors import BackboneUnavailable, RecordError
from lco.models.backbone import load_backbone


def test_qwen_omni_offline_fails_fast_naming_model_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(BackboneUnavailable) as err:
        load_backbone("qwen2_5_omni", "Qwen/Qwen2.5-Omni-3B")
    assert time.perf_counter() - start < 2.0
    assert "Qwen/Qwen2.5-Omni-3B" in str(err.value) and "model.path" in str(err.value)


def test_local_path_without_config_is_named(tmp_path):
    with pytest.raises(BackboneUnavailable, match="config.json"):
        load_backbone("qwen2_5_vl", str(tmp_path))


def test_cli_prints_one_message_and_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = subprocess.run([sys.executable, "-m", "lco.train", "model=qwen_omni", f"paths.log_dir={tmp_path}",
                           "data.sources.scenes.n=64", "logger=none"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "lco: error: model 'Qwen/Qwen2.5-Omni-3B'" in proc.stderr and "model.path" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hub_dataset_offline_names_data_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    source = TableSource("allnli", hub_id="sentence-transformers/all-nli", hub_config="triplet")
    with pytest.raises(RecordError, match="data.sources.allnli.path"):
        source.load()


@pytest.mark.parametrize("case", ["missing", "no_weights"])
def test_a_bad_local_model_path_is_named_before_data_loads(tmp_path, case):
    """An absolute folder that does not exist (Hugging Face said "Repo id must be in the form ...") and a folder
    with config.json but no weights (a Hydra-wrapped OSError, exit 1) both stop with lco's message. The data file
    does not exist either: naming model.path shows the model was checked first, before data or weights."""
    folder = tmp_path / "checkpoint"
    if case == "no_weights":
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "lco.train", f"paths.log_dir={tmp_path / 'logs'}", "model=qwen_vl",
                           f"model.path={folder}", "data=jsonl", f"data.sources.jsonl.path={tmp_path / 'none.jsonl'}",
                           "logger=none"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (message,) = [line for line in proc.stderr.splitlines() if line.startswith("lco: error:")]
    assert f"model.path='{folder}'" in message and "none.jsonl" not in message
    expected = {"missing": "does not exist", "no_weights": "has config.json but no weights: expected one of model.safetensors"}
    assert expected[case] in message
    assert not list((tmp_path / "logs").glob("train/runs/*/config.yaml"))  # lco wrote no run config: no model
    assert "Loading weights" not in proc.stdout + proc.stderr  # transformers' loading bar never showed
