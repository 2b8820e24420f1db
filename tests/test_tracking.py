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


def test_a_failed_job_ends_its_run_and_the_next_job_gets_a_new_one(tmp_path, offline, monkeypatch):
    monkeypatch.setattr(tracking, "_hydra", lambda: None)  # outside any Hydra app (tests before may have set one)
    first = tracking.WandbLogger(mode="offline", save_dir=str(tmp_path / "a"), name="a", group="g")
    with pytest.raises(RuntimeError, match="job failed"):
        with tracking.finishing([first]):
            first.log_metrics({"x": 1.0}, step=0)
            raise RuntimeError("job failed")
    second = tracking.WandbLogger(mode="offline", save_dir=str(tmp_path / "b"), name="b", group="g")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tracking.finishing([second]):
            second.log_metrics({"x": 2.0}, step=0)
    assert not [w for w in caught if "already in progress" in str(w.message)]  # Lightning's reuse warning
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


def scene_tasks(task=None):
    """A benchmark of one in-memory mteb task (tests/test_evaluation.py), for ``benchmark._target_``."""
    from tests.test_evaluation import SceneT2T

    return [SceneT2T()]


def test_evaluate_logs_beside_the_training_run(tmp_path, offline, monkeypatch):
    import lco.evaluate
    from tests.conftest import compose_train
    from tests.test_export import make_checkpoint

    adapter = make_checkpoint(tmp_path / "run/adapter", "tiny_text", "lora")
    (tmp_path / "run/tracking.json").write_text(json.dumps({"id": "t1", "group": "train/sweep", "name": "method=lora"}))
    monkeypatch.setattr(lco.evaluate, "check_available", lambda tasks: None)  # in memory: nothing to download
    cfg = compose_train(tmp_path / "eval", [f"checkpoint={adapter}", "benchmark._target_=tests.test_tracking.scene_tasks",
                                            "~benchmark.benchmark", "logger=wandb", "logger.mode=offline"],
                        config_name="evaluate")
    rows = lco.evaluate.run(cfg)
    (found,) = (tmp_path / "eval").rglob("offline-run-*")
    run = read_run(found)
    assert (run["run"]["job_type"], run["run"]["group"], run["run"]["name"]) == ("evaluate", "train/sweep", "method=lora")
    assert {r["category"]: r["mean_main_score"] for r in rows} == {"Retrieval": 1.0, "all": 1.0}
    assert run["summary"]["mteb/Retrieval"] == run["summary"]["mteb/all"] == 1.0 and run["exit_code"] == 0
    assert run["summary"]["mteb/summary"]["nrows"] == 2
    assert run["config"]["checkpoint"] == str(adapter) and run["config"]["provenance"]["packages"]["mteb"]


def test_summary_holds_the_probe_table_and_the_adapter_artifact(tmp_path, offline):
    logger = tracking.WandbLogger(mode="offline", save_dir=str(tmp_path), name="p", log_adapter=True)
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"before": {"i2t_r1": 0.25, "t2t_r1": 0.5}, "after": {"i2t_r1": 0.5, "t2t_r1": 0.5}}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    card = {"method": "lora", "family": "qwen2", "base_model": "lco-tiny/tiny_text", "pooling": "last",
            "normalize": True, "max_text_tokens": 650, "prompt_suffixes": {"text": "!"}}
    (adapter / "lco_embedding.json").write_text(json.dumps(card))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    with tracking.finishing([logger]):
        tracking.summarize([logger], {"val/r1": 0.1}, {"val/r1": 0.3}, {"device_hours": 0.5},
                           {"trainable": 10, "frozen": 90}, probe=probe, adapter=adapter)
    (found,) = tmp_path.rglob("offline-run-*")
    summary = read_run(found)["summary"]
    assert (summary["before/val/r1"], summary["after/val/r1"], summary["params/trainable"]) == (0.1, 0.3, 10)
    assert summary["probe/before_after"]["_type"] == "table-file" and summary["probe/before_after"]["nrows"] == 2
    table = json.loads(next(found.rglob("probe/before_after*.table.json")).read_text())
    assert table["columns"] == ["metric", "before", "after", "change"] and ["i2t_r1", 0.25, 0.5, 0.25] in table["data"]
    from tests.wandb_offline import records

    artifacts = [r.artifact for r in records(next(found.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "artifact"]
    models = [a for a in artifacts if a.type == "model"]  # W&B also stores the table as a run_table artifact
    assert [a.name for a in models] == [f"adapter-{read_run(found)['run']['id']}"]
    assert json.loads(models[0].metadata) == card
    assert {f.path for f in models[0].manifest.contents} == {"lco_embedding.json", "adapter_model.safetensors"}
