"""lco.tracking without a sweep: a failed job's W&B run is ended (exit code 1) and the next job gets its own run;
the run config is masked like config.yaml; resume and evaluation find the training run's identity."""

import json
import warnings

import pytest
from omegaconf import OmegaConf
from tests.wandb_offline import read_run

from lco import tracking


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_a_failed_job_ends_its_run_and_the_next_job_gets_a_new_one(tmp_path, offline):
    first = tracking.WandbLogger(mode="offline", save_dir=str(tmp_path / "a"), name="a", group="g")
    with pytest.raises(RuntimeError, match="job failed"):
        with tracking.finishing([first]):
            first.log_metrics({"x": 1.0}, step=0)
            raise RuntimeError("job failed")
    second = tracking.WandbLogger(mode="offline", save_dir=str(tmp_path / "b"), name="b", group="g")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "There is a wandb run already in progress" is a warning
        with tracking.finishing([second]):
            second.log_metrics({"x": 2.0}, step=0)
    (a,), (b,) = (list((tmp_path / d).rglob("offline-run-*")) for d in ("a", "b"))
    a, b = read_run(a), read_run(b)
    assert (a["exit_code"], b["exit_code"]) == (1, 0) and a["run"]["id"] != b["run"]["id"]
    assert [h["x"] for h in a["history"]] == [1.0] and [h["x"] for h in b["history"]] == [2.0]
    assert (a["run"]["name"], b["run"]["group"], b["run"]["job_type"]) == ("a", "g", "train")


def test_run_config_masks_secrets_as_config_yaml_does(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    cfg = OmegaConf.create({"model": {"path": "org/m", "token": "plain-text"}, "note": "x hf_abcdefghijklmnop y",
                            "optim": {"lr": 1e-4}})
    config = tracking.run_config(cfg, {"lco": {"commit": "abc"}})
    assert config["model"]["token"] == "***" and config["note"] == "x *** y" and config["optim"]["lr"] == 1e-4
    assert config["provenance"] == {"lco": {"commit": "abc"}}


def test_resume_and_evaluation_read_the_training_runs_identity(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "tracking.json").write_text(json.dumps({"id": "abc123", "group": "train/2026", "name": "method=lora"}))
    node = OmegaConf.create({"_target_": "lco.tracking.WandbLogger", "id": None, "group": None, "name": None})
    assert tracking.resume_id(node, run) == {"id": "abc123"}
    assert tracking.follow(node, run / "adapter") == {"group": "train/2026", "name": "method=lora"}
    mine = OmegaConf.create({"_target_": "lco.tracking.WandbLogger", "id": None, "group": "mine", "name": None})
    assert tracking.follow(mine, run / "adapter") == {"name": "method=lora"}  # a group the user set stays
    csv = OmegaConf.create({"_target_": "pytorch_lightning.loggers.CSVLogger"})
    assert tracking.resume_id(csv, run) == {} and tracking.follow(csv, run / "adapter") == {}
    assert tracking.follow(node, tmp_path / "elsewhere/adapter") == {}  # no training run recorded there
