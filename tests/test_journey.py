"""The user's journey as the README tells it: a Hydra multirun ablation logged to W&B (offline), compared from the
W&B runs read back from disk and with ``lco.report``; evaluation runs that land beside the training runs."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.wandb_offline import read_run

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ["model=tiny_omni", "data=scenes", "data.sources.scenes.n=96", "data.val_size=32", "data.batch_size=8",
         "method=lora,linear_probe", "optim.optimizer.lr=3e-4", "logger=wandb", "logger.mode=offline",
         "trainer.max_steps=3"]


def user_env(**extra) -> dict:
    """The environment of a user's shell: hub offline, and no WANDB_MODE (the tests' own default is disabled)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """``python -m lco.train -m ... method=lora,linear_probe logger=wandb logger.mode=offline``: the sweep folder
    and the console."""
    root = tmp_path_factory.mktemp("journey")
    proc = subprocess.run([sys.executable, "-m", "lco.train", "-m", f"paths.log_dir={root / 'logs'}", *SWEEP],
                          capture_output=True, text=True, env=user_env(), cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = (root / "logs/train/multiruns").iterdir()
    return folder, proc.stdout + proc.stderr


def offline_runs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("offline-run-*"))


def test_a_sweep_gives_one_named_configured_wandb_run_per_job(sweep):
    folder, console = sweep
    assert "already in progress" not in console  # Lightning's "... will reuse this run"
    runs = {job: offline_runs(folder / job) for job in ("0", "1")}
    assert all(len(found) == 1 for found in runs.values()), runs  # each job wrote its own run, in its own folder
    read = {job: read_run(found[0]) for job, found in runs.items()}
    assert [read[j]["run"]["name"] for j in ("0", "1")] == ["method=lora", "method=linear_probe"]
    assert {r["run"]["group"] for r in read.values()} == {f"train/{folder.name}"}  # one group: the sweep
    assert len({r["run"]["id"] for r in read.values()}) == 2
    for job, method in (("0", "lora"), ("1", "linear_probe")):
        run = read[job]
        assert run["run"]["job_type"] == "train" and run["run"]["project"] == "lco" and run["exit_code"] == 0
        config = run["config"]
        assert config["choices"]["method"] == method and config["choices"]["data"] == "scenes"
        assert not any(k == "hydra" or k.startswith("hydra/") for k in config["choices"])
        assert config["method"]["_target_"].rsplit(".", 1)[-1] == {"lora": "LoRA", "linear_probe": "LinearProbe"}[method]
        used = json.loads((folder / job / "metrics.json").read_text())
        assert config["optim"]["optimizer"]["lr"] == 3e-4 and config["loss"]["temperature"] == 0.03  # reference
        # the W&B config is the run folder's config.yaml (plus choices and provenance)
        from omegaconf import OmegaConf

        on_disk = OmegaConf.to_container(OmegaConf.load(folder / job / "config.yaml"))
        assert {k: v for k, v in config.items() if k not in ("choices", "provenance")} == on_disk
        summary = run["summary"]
        assert summary["before/val/r1"] == used["before"]["val/r1"]
        assert summary["after/val/r1"] == used["after"]["val/r1"]
        assert summary["params/trainable"] == used["params"]["trainable"] > 0
        assert summary["cost/device_hours"] == pytest.approx(used["cost"]["device_hours"])
        # val/r1 in the run's history twice: before training (step 0) and at the final step (3)
        steps = [h["trainer/global_step"] for h in run["history"] if "val/r1" in h]
        assert steps == [0, 3]
        provenance = config["provenance"]
        assert provenance == json.loads((folder / job / "provenance.json").read_text())
        assert provenance["packages"]["transformers"] and provenance["base_model"]["path"] == "lco-tiny/tiny_omni"


def test_report_lists_both_jobs_of_the_sweep(sweep):
    folder, _ = sweep
    proc = subprocess.run([sys.executable, "-m", "lco.report", str(folder)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = (folder / "report.md").read_text()
    assert "method=lora" in report and "method=linear_probe" in report


def test_run_folder_and_card_record_provenance(sweep):
    folder, _ = sweep
    card = json.loads((folder / "0/adapter/lco_embedding.json").read_text())["provenance"]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert card["lco"]["commit"] == commit.strip()
    lock = ROOT / "requirements.lock"
    assert card["lock"]["sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    import torch
    import transformers

    assert card["packages"]["torch"] == torch.__version__
    assert card["packages"]["transformers"] == transformers.__version__
    base = card["base_model"]
    config = Path(base["local_path"]) / "config.json"
    assert base["config_sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()


def test_analyze_logs_beside_the_training_run(sweep, tmp_path):
    folder, _ = sweep
    trained = json.loads((folder / "0/tracking.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "lco.analyze", f"paths.log_dir={tmp_path / 'logs'}",
                           "model=tiny_omni", f"checkpoints=[{folder / '0/adapter'}]", "pairs.n=24", "k=3",
                           "logger=wandb", "logger.mode=offline"],
                          capture_output=True, text=True, env=user_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = offline_runs(tmp_path / "logs")
    run = read_run(found)
    assert run["run"]["job_type"] == "analyze" and run["exit_code"] == 0
    assert (run["run"]["group"], run["run"]["name"]) == (trained["group"], trained["name"]) == (
        f"train/{folder.name}", "method=lora")
    import csv

    (table,) = (tmp_path / "logs").rglob("analysis.csv")
    last = [r for r in csv.DictReader(table.open()) if r["checkpoint"] == "base"][-1]
    assert run["summary"]["base/alignment"] == pytest.approx(float(last["alignment"]))
    assert run["config"]["checkpoints"] == [str(folder / "0/adapter")]


def test_jobs_through_a_cluster_launcher_get_their_own_runs(tmp_path):
    """hydra-submitit-launcher's local executor runs each job in its own process, as on SLURM: each still gets its
    own W&B run, named from the sweep and grouped by it."""
    small = ["model=tiny_text", "data=scenes", "data.sources.scenes.n=64", "data.val_size=16", "data.batch_size=8",
             "method=lora,linear_probe", "logger=wandb", "logger.mode=offline", "trainer.max_steps=2"]
    proc = subprocess.run([sys.executable, "-m", "lco.train", "-m", "hydra/launcher=submitit_local",
                           f"paths.log_dir={tmp_path / 'logs'}", *small],
                          capture_output=True, text=True, env=user_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = (tmp_path / "logs/train/multiruns").iterdir()
    assert (folder / ".submitit").is_dir()  # the jobs ran as submitit jobs, not in this process
    runs = [read_run(found) for job in ("0", "1") for found in offline_runs(folder / job)]
    assert [r["run"]["name"] for r in runs] == ["method=lora", "method=linear_probe"]
    assert {r["run"]["group"] for r in runs} == {f"train/{folder.name}"} and all(r["exit_code"] == 0 for r in runs)


def test_under_ddp_only_rank_zero_opens_a_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lco.train", f"paths.log_dir={tmp_path / 'logs'}", "trainer=ddp_cpu",
                           "model=tiny_text", "data=scenes", "data.sources.scenes.n=64", "data.val_size=16",
                           "data.batch_size=4", "trainer.max_steps=2", "logger=wandb", "logger.mode=offline"],
                          capture_output=True, text=True, env=user_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = offline_runs(tmp_path / "logs")  # one run for the two ranks
    run = read_run(found)
    assert run["exit_code"] == 0 and run["summary"]["cost/devices"] == 2 and "after/val/r1" in run["summary"]
