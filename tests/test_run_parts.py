"""Direct tests of the small modules a run leans on: ``lco/hub.py`` (reachability), ``lco/summary.py`` (cost,
metrics.json), ``lco/methods/base.py`` (parameter counts, decoder parameters), ``lco/analysis/layers.py``
(per-layer states)."""

import json
import socket
from types import SimpleNamespace

import pytest
import torch

from lco import hub
from lco.analysis.layers import layer_states
from lco.methods.base import count_parameters, decoder_parameters
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.summary import record_cost, write_metrics


@pytest.mark.parametrize("value,offline", [("1", True), ("true", True), ("0", False), ("", False), ("False", False)])
def test_hub_offline_flags(monkeypatch, value, offline):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub.hub_offline_flag() is offline


def test_hub_reachable_asks_the_endpoints_host_and_never_when_offline(monkeypatch):
    asked = []

    def connect(address, timeout):
        asked.append((address, timeout))
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_reachable() is False and asked == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example.org/hf")
    assert hub.hub_reachable(timeout=0.5) is False and asked == [(("mirror.example.org", 443), 0.5)]


def test_cost_is_wall_time_times_devices_and_reaches_every_logger(tmp_path):
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((metrics, step)), save=lambda: None)
    trainer = SimpleNamespace(world_size=8, loggers=[logger, logger], global_step=12)
    cost = record_cost(trainer, 900.0)
    assert cost == {"wall_seconds": 900.0, "devices": 8.0, "device_hours": 2.0}
    assert logged == [({"cost/wall_seconds": 900.0, "cost/devices": 8.0, "cost/device_hours": 2.0}, 12)] * 2
    write_metrics(tmp_path / "metrics.json", {"val/r1": 0.1}, {"val/r1": 0.5}, cost, {"trainable": 3, "frozen": 7},
                  "lora")
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "method": "lora", "before": {"val/r1": 0.1}, "after": {"val/r1": 0.5}, "cost": cost,
        "params": {"trainable": 3, "frozen": 7}}


def test_counts_and_decoder_parameters_of_the_tiny_text_twin():
    embedder = Embedder(load_backbone("qwen2", "lco-tiny/tiny_text", dtype="float32"))
    total = sum(p.numel() for p in embedder.parameters())
    assert count_parameters(embedder) == {"trainable": total, "frozen": 0}
    for param in embedder.parameters():
        param.requires_grad_(False)
    norm = embedder.headless.norm.weight.requires_grad_(True)
    assert count_parameters(embedder) == {"trainable": norm.numel(), "frozen": total - norm.numel()}
    names = [n for n, _ in decoder_parameters(embedder)]
    without = [n for n, _ in decoder_parameters(embedder, include_embeddings=False)]
    assert all(n.startswith(embedder.family.lm_prefix + ".") for n in names)
    assert set(names) - set(without) == {f"{embedder.family.lm_prefix}.embed_tokens.weight"}


def test_layer_states_end_with_the_pooled_final_state():
    """[layers + 1, N, D]: every decoder layer's last-token state, then the final-norm state the embedder pools."""
    embedder = Embedder(load_backbone("qwen2", "lco-tiny/tiny_text", dtype="float32"), normalize=False).eval()
    items = [{"text": "a red cube"}, {"text": "a much longer caption of a small blue cone at the top"}]
    states = layer_states(embedder, items, batch_size=1)
    layers = embedder.backbone.model.config.get_text_config().num_hidden_layers
    assert states.shape == (layers + 1, 2, embedder.hidden_size)
    assert torch.allclose(states[-1], embedder.encode(items), atol=1e-5)
