"""The toy-world study's tools: the held-out probe, the paired test, the packed checkpoint, the report."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lco.analysis.paired import paired_change
from lco.data.synthetic import DETAILS, TEMPLATES, SceneTriplets, caption
from lco.evaluation.toyworld import SceneProbe, _top1_hits, split_scenes
from lco.models.delta import pack, unpack


def test_paired_change_known_answers():
    scenes = np.repeat(np.arange(20), 3)  # 20 scenes, 3 queries each
    same = np.random.default_rng(0).integers(0, 2, size=(2, 60))
    unchanged = paired_change(same, same, scenes)
    assert unchanged["change"] == 0 and unchanged["p"] == 1.0 and unchanged["ci_low"] == unchanged["ci_high"] == 0
    better = paired_change(np.zeros((3, 60)), np.ones((3, 60)), scenes)
    assert better["change"] == 1.0 and better["ci_low"] == 1.0 and better["p"] < 1e-3
    half = np.zeros((1, 60))
    half[0, :30] = 1  # 10 of 20 scenes improve fully
    stats = paired_change(np.zeros((1, 60)), half, scenes)
    assert stats["change"] == 0.5 and stats["ci_low"] < 0.5 < stats["ci_high"] and stats["seeds"] == 1
    assert stats["scenes_changed"] == 10 and unchanged["scenes_changed"] == 0
    with pytest.raises(ValueError, match="same runs and queries"):
        paired_change(np.zeros((2, 60)), np.zeros((3, 60)), scenes)


def test_top1_hits_count_any_item_of_the_query_scene():
    scene_vectors = torch.eye(3)
    corpus = scene_vectors.repeat(2, 1)  # two captions per scene
    ids = torch.arange(3)
    assert _top1_hits(scene_vectors, corpus, ids, ids.repeat(2)) == [1, 1, 1]
    assert _top1_hits(scene_vectors, corpus, ids, torch.tensor([1, 2, 0, 1, 2, 0])) == [0, 0, 0]
    # text-to-text excludes the query itself: its paraphrase must be found
    assert _top1_hits(corpus, corpus, ids.repeat(2), ids.repeat(2), exclude_self=True) == [1] * 6


def test_scene_probe_measures_held_out_scenes(tiny_backbone):
    from lco.models.embedder import Embedder

    probe = SceneProbe(split="test", k=5)
    assert len(probe.scenes) == 53 and len(probe.captions) == 53 * len(TEMPLATES)
    assert probe.captions[53]["text"] == caption(probe.scenes[0], TEMPLATES[1])
    assert split_scenes("train") + split_scenes("test") != [] and len(split_scenes("all")) == 320
    embedder = Embedder(tiny_backbone("tiny_omni"))
    embedder.train()
    metrics, hits = probe(embedder)
    assert embedder.training  # restored
    assert {len(hits[d]) for d in ("t2i_r1", "t2t_r1")} == {212} and len(hits["i2t_r1"]) == 53
    for direction, outcome in hits.items():
        assert metrics[direction] == pytest.approx(sum(outcome) / len(outcome))
        assert len(probe.query_scenes[direction]) == len(outcome)
    assert 0 <= metrics["alignment"] <= 1 and -1 <= metrics["anisotropy_text"] <= 1
    layers = embedder.backbone.model.config.get_text_config().num_hidden_layers
    assert metrics["alignment"] == metrics[f"alignment_l{layers}"]  # the last entry is the final norm
    again, _ = probe(embedder)
    assert again == metrics  # deterministic


def test_scene_templates_limit_text_diversity():
    records = SceneTriplets(n=50, templates=2).load()
    first_two = {t.split("{")[0].strip().lower()[:10] for t in TEMPLATES[:2]}
    starts = {r["anchor"]["text"].lower()[:10] for r in records}
    assert all(any(s.startswith(f[:5]) for f in first_two) for s in starts)
    with pytest.raises(ValueError, match="templates=1"):
        SceneTriplets(templates=1)
    assert SceneTriplets(n=30).load() == SceneTriplets(n=30, templates=len(TEMPLATES)).load()


def test_scene_detail_lengthens_text_anchors_only(tmp_path):
    """detail=k: the same scenes, positives and negatives; text anchors gain 0..k neutral sentences (varied
    lengths, All-NLI's long premise vs short hypotheses), image anchors stay images."""
    plain, detailed = SceneTriplets(n=200).load(), SceneTriplets(n=200, detail=6).load()
    assert SceneTriplets(n=30, detail=0).load() == SceneTriplets(n=30).load()
    added = []
    for a, b in zip(plain, detailed):
        assert (a["positive"], a["negatives"]) == (b["positive"], b["negatives"])
        assert b["anchor"]["text"].startswith(a["anchor"]["text"])
        tail = b["anchor"]["text"][len(a["anchor"]["text"]):]
        added.append(sum(tail.count(d) for d in DETAILS))
    assert min(added) == 0 and max(added) == 6 and 2.5 < sum(added) / len(added) < 3.5  # uniform 0..6
    mixed = SceneTriplets(n=40, detail=3, image_fraction=0.5, image_dir=str(tmp_path)).load()
    assert any("image" in r["anchor"] for r in mixed)
    assert all(set(r["anchor"]) == {"image"} for r in mixed if "image" in r["anchor"])
    with pytest.raises(ValueError, match="detail=-1"):
        SceneTriplets(detail=-1)


def test_packed_model_unpacks_exactly_and_fails_clearly(tmp_path, tiny_backbone):
    from lco.models.tiny import materialize

    base = materialize("tiny_text")
    trained_dir = tmp_path / "trained"
    trained_dir.mkdir()
    state = load_file(str(base / "model.safetensors"))
    embed = next(k for k in state if "embed_tokens" in k)
    state[embed][[5, 77, 1000]] += 1.0  # a few token rows trained
    layer = next(k for k in state if k.endswith("layers.0.mlp.up_proj.weight"))
    state[layer] = state[layer] * 0.5  # a whole tensor trained
    save_file(state, str(trained_dir / "model.safetensors"), metadata={"format": "pt"})
    info = pack(trained_dir, base, tmp_path / "delta.safetensors")
    assert info["row_tensors"] >= 1 and info["bytes"] < (base / "model.safetensors").stat().st_size / 5
    delta = load_file(str(tmp_path / "delta.safetensors"))
    assert delta[f"{embed}@rows"].tolist() == [5, 77, 1000]
    out = unpack(tmp_path / "delta.safetensors", base, tmp_path / "rebuilt")
    rebuilt = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(rebuilt[k], state[k]) for k in state)
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "delta.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()  # the real SHA-256 and table shapes
    delta[f"{embed}@values"][0, 0] += 1  # corrupt one number
    save_file(delta, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match="corrupt"):
        unpack(tmp_path / "bad.safetensors", base, tmp_path / "never")
    with pytest.raises(ValueError, match="does not fit the base model"):
        unpack(tmp_path / "delta.safetensors", materialize("tiny_omni"), tmp_path / "never2")


def _fake_probe(before: list[int], after: list[int]) -> dict:
    directions = ("i2t_r1", "t2i_r1", "t2t_r1")
    metrics = {"alignment": 0.5, "anisotropy_image": 0.5, "anisotropy_text": 0.5}
    return {"before": {**metrics, **{d: sum(before) / len(before) for d in directions}},
            "after": {**metrics, **{d: sum(after) / len(after) for d in directions}},
            "hits_before": {d: before for d in directions}, "hits_after": {d: after for d in directions},
            "query_scenes": {d: list(range(len(before))) for d in directions}}


def test_report_pairs_runs_over_seeds(tmp_path):
    from lco.report import main

    runs = {"0": (["experiment=toyworld", "optim.optimizer.lr=1e-4", "seed=0"], [0, 0, 0, 0], [1, 1, 0, 0]),
            "1": (["experiment=toyworld", "optim.optimizer.lr=1e-4", "seed=1"], [0, 0, 0, 0], [1, 1, 1, 1]),
            "2": (["experiment=toyworld", "seed=0"], [1, 1, 1, 1], [1, 1, 1, 1])}
    for name, (overrides, before, after) in runs.items():
        job = tmp_path / name
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("\n".join(f"- {o}" for o in overrides) + "\n")
        (job / "probe.json").write_text(json.dumps(_fake_probe(before, after)))
        (job / "metrics.json").write_text(json.dumps({"after": {"val/r1": 0.5}, "cost": {"device_hours": 0.01},
                                                      "params": {"trainable": 10}}))
    text = main([str(tmp_path)]).read_text()
    lr_row = next(line for line in text.splitlines() if line.startswith("| optim.optimizer.lr=1e-4 | 2 |"))
    assert "0.000 -> 0.750 (+0.750" in lr_row  # seed-averaged change: (2/4 + 4/4) / 2
    assert "| (none) | 1 | 1.000 -> 1.000 (+0.000" in text
    assert (tmp_path / "tradeoff.png").stat().st_size > 0


def test_default_run_is_the_toy_lco_stage(tmp_path):
    """`python -m lco.train` with no overrides (budget cut to 4 steps): the shipped pretrained toy thinker, the
    text-only stage, and the held-out probe before and after."""
    from tests.conftest import compose_train
    from lco.train import run

    cfg = compose_train(tmp_path, ["data.sources.scenes.n=64", "trainer.max_epochs=1", "logger=none",
                                   "callbacks.model_checkpoint=null"])
    assert cfg.model.path == "lco-tiny/toy_omni_pretrained" and cfg.data.probe.split == "test"
    run(cfg)
    probe = json.loads((tmp_path / "probe.json").read_text())
    before, after = probe["before"], probe["after"]
    # the shipped model is generatively pretrained: its embeddings already retrieve (a random init scores ~0)
    assert before["t2t_r1"] > 0.8 and before["i2t_r1"] > 0.2 and before["i2t_colour"] > 0.9, before
    assert before["alignment"] > 0.4, before
    assert after != before and all(0 <= after[d] <= 1 for d in ("i2t_r1", "t2i_r1", "t2t_r1"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "lora" and (tmp_path / "adapter" / "adapter_config.json").exists()


def test_probe_needing_images_fails_on_a_text_model_before_it_loads(tmp_path):
    from lco.errors import ConfigError
    from lco.train import run
    from tests.conftest import compose_train

    cfg = compose_train(tmp_path, ["model=tiny_text", "logger=none"])
    with pytest.raises(ConfigError, match=r"data.probe \(set data.probe=null"):
        run(cfg)
    assert not (tmp_path / "config.yaml").exists()  # nothing ran
