"""Real checkpoints and hub datasets, offline: fail fast, name the model and the key to set."""

import os
import subprocess
import sys
import time

import pytest

from lco.data.records import RecordError
from lco.data.sources import TableSource
from lco.models.backbone import BackboneUnavailable, load_backbone


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
