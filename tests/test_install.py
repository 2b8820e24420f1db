"""The locked environment: requirements.lock covers what pyproject asks for, `make install` installs exactly it on a
fresh machine, and lco trains from that install."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from lco.provenance import LOCK, lock_differences, locked_versions

ROOT = Path(__file__).resolve().parent.parent


def torch_version() -> str:
    return re.search(r"^TORCH_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def test_the_lock_pins_every_requirement_with_hashes_and_leaves_torch_to_the_makefile():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pins = locked_versions()
    for req in wanted:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "torch":
            assert name not in pins and req.specifier.contains(torch_version())
            continue
        assert name in pins, f"{req.name} is not in {LOCK.name}: run make lock"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside {req.specifier}"
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n", 2)[2])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)
    assert not any(name.startswith("nvidia-") or name == "triton" for name in pins)  # resolved on the CPU wheel


@pytest.mark.skipif(os.environ.get("LCO_TEST_LATEST") == "1", reason="make test-latest: newest versions, not the lock")
def test_this_environment_is_the_lock():
    assert lock_differences() == {}
    import torch

    assert Version(torch.__version__).base_version == torch_version()


def test_lock_differences_names_what_differs(tmp_path):
    import transformers

    lock = tmp_path / "requirements.lock"
    lock.write_text(f"transformers=={transformers.__version__} \\\n    --hash=sha256:0\nnot-installed-pkg==1.0\n"
                    "peft==0.0.1 ; python_version < '4'\n")
    found = lock_differences(lock)
    assert set(found) == {"not-installed-pkg", "peft"} and found["not-installed-pkg"] == ("1.0", None)
    proc = subprocess.run([sys.executable, "-m", "lco.provenance", "--diff-lock", str(lock)], capture_output=True,
                          text=True, timeout=60)
    assert "2 package(s) differ" in proc.stdout and "not-installed-pkg: not installed (lock 1.0)" in proc.stdout


@pytest.fixture
def venv(tmp_path):
    yield tmp_path / "venv"
    shutil.rmtree(tmp_path / "venv", ignore_errors=True)  # 2.3 GB


def test_a_fresh_install_from_the_lock_trains(tmp_path, venv):
    """`make install` into a new environment (as `make train`/`make test` do on a fresh machine), then one
    training step of the user's command from that environment."""
    proc = subprocess.run(["make", "-C", str(ROOT), "install", f"VENV={venv}"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    import hashlib

    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert f"lco: installed requirements.lock sha256 {digest}" in proc.stdout
    listed = subprocess.run([str(venv / "bin/python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True).stdout
    have = {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in json.loads(listed)}
    assert {n: v for n, v in locked_versions().items() if have.get(n) != v} == {}
    assert Version(have["torch"]).base_version == torch_version()
    run = subprocess.run([str(venv / "bin/python"), "-m", "lco.train", f"paths.log_dir={tmp_path / 'logs'}",
                          "model=tiny_text", "data=scenes", "data.sources.scenes.n=32", "data.val_size=0",
                          "data.batch_size=8", "trainer.max_steps=1", "logger=none"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
    assert run.returncode == 0, run.stderr[-3000:]
    (metrics,) = (tmp_path / "logs").rglob("metrics.json")
    after = json.loads(metrics.read_text())["after"]
    assert 0 < after["train/loss"] < 10  # one InfoNCE step over 8 triplets: about log(16)
    (provenance,) = (tmp_path / "logs").rglob("provenance.json")
    assert json.loads(provenance.read_text())["lock"] == {"file": str(LOCK), "sha256": digest, "matches": True}
