"""Every config composes; every experiment smoke-runs; wrong keys fail before any model loads."""

from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from lco.cli import CONF_DIR
from lco.config import check_config
from lco.errors import ConfigError
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
    metrics, built = run(cfg)
    (loss,) = built["module"].history["train/loss"]  # debug=fdr: one step, whose loss the run reports
    assert built["trainer"].global_step == 1 and metrics["train/loss"] == pytest.approx(float(loss))
    saved = list((tmp_path / "adapter").iterdir())
    assert {"lco_embedding.json", "tokenizer.json"} <= {p.name for p in saved} and any(p.suffix == ".safetensors" for p in saved)


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


def test_yaml_is_the_one_source_of_recipe_defaults():
    """Where an lco class has a Python default for a key its base YAML sets, the two are equal; None in Python
    means "no default of its own" (the YAML's value is the only one). Options that exist to differ (model, source
    and loss variants) are compared only where their class is lco's and the key is not theirs to change."""
    import dataclasses
    import inspect
    from pathlib import Path

    from hydra.utils import get_object

    base = ["data/base/triplets.yaml", "preprocess/reference.yaml", "embed/reference.yaml", "step/default.yaml", "loss/infonce.yaml", "method/lora.yaml",
            "method/full.yaml", "method/linear_probe.yaml", "method/clip.yaml", "logger/wandb.yaml",
            "optim/adamw.yaml"]
    differ = []

    def compare(node, where):
        if not isinstance(node, DictConfig):
            return
        target = node.get("_target_")
        if target and str(target).startswith("lco."):
            params = inspect.signature(get_object(target)).parameters
            for key in node:
                param = params.get(key)
                if param is None or param.default in (inspect.Parameter.empty, None):
                    continue
                value = OmegaConf.to_container(node, resolve=False)[key]
                default = param.default
                cls = get_object(target)
                if dataclasses.is_dataclass(cls) and repr(default) == "<factory>":  # a dataclass default_factory
                    default = next(f.default_factory() for f in dataclasses.fields(cls) if f.name == key)
                if isinstance(value, str) and "${" in value:
                    continue
                if isinstance(default, tuple):
                    default = list(default)
                if value != default:
                    differ.append(f"{where}.{key}: YAML {value!r}, Python {default!r} ({target})")
        for key in node:
            compare(node._get_node(key), f"{where}.{key}")

    for name in base:
        compare(OmegaConf.load(Path(CONF_DIR) / name), name)
    assert differ == []
