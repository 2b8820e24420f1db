"""Every config composes; every experiment smoke-runs; wrong keys fail before any model loads."""

from pathlib import Path

import pytest

from lco.config import ConfigError, check_config
from lco.cli import CONF_DIR
from lco.train import run
from tests.conftest import compose_train

GROUPS = ["model", "data", "embed", "method", "loss", "optim", "trainer", "logger", "callbacks", "debug", "experiment"]
# options with mandatory (???) values the user must give
REQUIRED = {("data", "jsonl"): ["data.sources.jsonl.path=/d.jsonl"],
            ("data", "parquet"): ["data.sources.parquet.path=/d.parquet"], ("data", "hf"): ["data.sources.hf.hub_id=u/d"]}
TINY_FOR = {"qwen2_5_omni": "tiny_omni", "qwen2_5_vl": "tiny_vl", "qwen2_vl": "tiny_vl", "qwen2": "tiny_text"}


def options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_checks(tmp_path, group, option):
    cfg = compose_train(tmp_path, [f"{group}={option}", *REQUIRED.get((group, option), [])])
    check_config(cfg)
    if group == "model":
        assert cfg.model.path and cfg.model.family


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_smoke_runs(tmp_path, experiment):
    cfg = compose_train(tmp_path, [f"experiment={experiment}"])
    tiny = TINY_FOR[cfg.model.family]  # the real checkpoint needs the hub: run its family's tiny twin
    cfg = compose_train(tmp_path, [f"experiment={experiment}", f"model={tiny}", "data=scenes", "data.sources.scenes.n=256",
                                   "data.batch_size=4", "trainer=cpu", "logger=none", "debug=fdr"])
    metrics = run(cfg)
    assert metrics["train/loss"] > 0 and (tmp_path / "adapter" / "adapter_config.json").exists()


def test_unknown_key_fails_before_loading_with_a_hint(tmp_path, monkeypatch):
    import lco.models.backbone as backbone

    monkeypatch.setattr(backbone, "resolve_path", lambda *a, **k: pytest.fail("model loading started"))
    cfg = compose_train(tmp_path, ["+model.pth=/models/x", "+loss.temprature=0.1"])
    with pytest.raises(ConfigError) as err:
        run(cfg)
    text = str(err.value)
    assert "model.pth" in text and "'path'" in text and "loss.temprature" in text and "'temperature'" in text


def test_hydra_rejects_override_of_missing_key(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_train(tmp_path, ["model.pth=/models/x"])


def test_mandatory_source_values_are_named(tmp_path):
    cfg = compose_train(tmp_path, ["data=jsonl"])
    with pytest.raises(ConfigError, match="data.sources.jsonl.path"):
        check_config(cfg)
