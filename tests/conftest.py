"""Shared fixtures: offline environment, tiny backbones, Hydra composition of conf/train.yaml."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from lco.cli import CONF_DIR  # noqa: E402

torch.set_num_threads(1)
TINY_FAMILIES = {"tiny_text": "qwen2", "tiny_vl": "qwen2_5_vl", "tiny_omni": "qwen2_5_omni",
                 "tiny_qwen3_vl": "qwen3_vl", "tiny_qwen3_vl_moe": "qwen3_vl_moe", "tiny_qwen3_omni": "qwen3_omni",
                 "tiny_qwen3_5": "qwen3_5", "tiny_qwen3_5_moe": "qwen3_5_moe"}


def compose_train(tmp_path, overrides: list[str] = (), config_name: str = "train"):
    """conf/<config_name>.yaml composed as `python -m lco.<entry>` would, with outputs under ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """(folder, relative names per kind) of ``tests/media_fixtures.write_media``: images, audio clips, videos."""
    from tests.media_fixtures import write_media

    root = tmp_path_factory.mktemp("media")
    return root, write_media(root)


@pytest.fixture
def tiny_backbone():
    from lco.models.backbone import load_backbone

    def load(name: str = "tiny_text"):
        return load_backbone(TINY_FAMILIES[name], f"lco-tiny/{name}", dtype="float32")

    return load


def run_entry(module: str, tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as a user runs it: a subprocess with the hub offline (plus ``env``), runs
    under ``tmp_path/logs``."""
    return subprocess.run([sys.executable, "-m", module, f"paths.log_dir={tmp_path / 'logs'}", *args],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                          timeout=300)
