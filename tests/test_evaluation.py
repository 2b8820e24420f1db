"""The mteb wrapper on in-memory tasks and mteb's mock tasks; offline benchmarks fail fast, naming datasets."""

import json

import mteb
import pytest
from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.abstasks.zeroshot_classification import AbsTaskZeroShotClassification

from lco.data.synthetic import render_scene
from lco.evaluation.benchmarks import (
    DatasetsUnavailable, check_available, select_tasks, skip_self_matches, summarize)
from lco.evaluation.mteb_encoder import MtebEncoder, batch_items
from lco.models.embedder import Embedder

COMMON = dict(description="in-memory test task", reference=None, dataset={"path": "local/none", "revision": "0"},
              eval_splits=["test"], eval_langs=["eng-Latn"], date=("2024-01-01", "2024-01-02"), domains=[],
              task_subtypes=[], license="mit", annotations_creators="derived", dialect=[],
              sample_creation="found", bibtex_citation="")
SCENES = [dict(colour=c, shape=s, size="large", position=p) for c, s, p in
          [("red", "cube", "left"), ("blue", "sphere", "top"), ("green", "cone", "right"), ("black", "cylinder", "bottom")]]


def _split(queries, corpus, relevant):
    return {"default": {"test": RetrievalSplitData(queries=Dataset.from_dict(queries), corpus=Dataset.from_dict(corpus),
                                                   relevant_docs=relevant, top_ranked=None)}}


class SceneT2T(AbsTaskRetrieval):
    metadata = TaskMetadata(name="SceneT2T", type="Retrieval", category="t2t", modalities=["text"],
                            main_score="ndcg_at_10", **COMMON)

    def load_data(self, num_proc=None, **kwargs):
        texts = ["a large {colour} {shape} on the {position}".format(**s) for s in SCENES]
        self.dataset = _split({"id": ["q0", "q1"], "text": texts[:2]},
                              {"id": ["d0", "d1", "d2", "d3"], "title": [""] * 4, "text": texts},
                              {"q0": {"d0": 1}, "q1": {"d1": 1}})
        self.data_loaded = True


class SceneI2ISelf(AbsTaskRetrieval):
    """Each query image is also in the corpus under its own id; its answer is an exact copy under another id."""
    metadata = TaskMetadata(name="SceneI2ISelf", type="Any2AnyRetrieval", category="i2i", modalities=["image"],
                            main_score="hit_rate_at_1", **COMMON)

    def load_data(self, num_proc=None, **kwargs):
        images = [render_scene(s) for s in SCENES]
        self.dataset = _split({"id": ["a", "b"], "image": images[:2]},
                              {"id": ["a", "b", "c", "d", "a_copy", "b_copy"], "image": images + images[:2]},
                              {"a": {"a_copy": 1}, "b": {"b_copy": 1}})
        self.data_loaded = True


class SceneZeroShot(AbsTaskZeroShotClassification):
    metadata = TaskMetadata(name="SceneZeroShot", type="ZeroShotClassification", category="i2t",
                            modalities=["image", "text"], main_score="accuracy", **COMMON)

    def load_data(self, num_proc=None, **kwargs):
        self.dataset = DatasetDict({"test": Dataset.from_dict({"image": [render_scene(s) for s in SCENES],
                                                               "label": [0, 1, 2, 3]})})
        self.data_loaded = True

    def get_candidate_labels(self):
        return [f"a photo of a {s['shape']}" for s in SCENES]


@pytest.fixture(scope="module")
def encoder():
    from lco.models.backbone import load_backbone

    return MtebEncoder(Embedder(load_backbone("qwen2_5_vl", "lco-tiny/tiny_vl")), name="lco/tiny-vl")


def test_batch_items_keep_modalities():
    assert batch_items({"id": ["1"], "text": ["t"], "image": ["IMG"], "title": ["x"]}) == [{"text": "t", "image": "IMG"}]
    with pytest.raises(ValueError, match="none of text/image"):
        batch_items({"id": ["1"]})


def test_in_memory_tasks_run_and_write_results(encoder, tmp_path):
    tasks = [SceneT2T(), SceneI2ISelf(), SceneZeroShot()]
    skip_self_matches(tasks)
    assert tasks[1].ignore_identical_ids and not tasks[0].ignore_identical_ids
    results = mteb.evaluate(encoder, tasks, cache=mteb.ResultCache(cache_path=str(tmp_path)),
                            overwrite_strategy="always", show_progress_bar=False)
    scores = {r.task_name: r.get_score() for r in results.task_results}
    assert set(scores) == {"SceneT2T", "SceneI2ISelf", "SceneZeroShot"}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert scores["SceneI2ISelf"] == 1.0  # the self-match is skipped, so the exact copy ranks first
    files = sorted(p.name for p in tmp_path.rglob("*.json"))
    assert {"SceneT2T.json", "SceneI2ISelf.json", "SceneZeroShot.json", "model_meta.json"} <= set(files)
    rows = summarize(results, tasks)
    assert [r["category"] for r in rows] == ["Any2AnyRetrieval", "Retrieval", "ZeroShotClassification", "all"]
    assert rows[-1]["tasks"] == 3 and rows[-1]["mean_main_score"] == pytest.approx(sum(scores.values()) / 3)
    json.dumps(rows)


def test_mteb_mock_run_passes(encoder):
    result = mteb.mock_run(encoder)
    assert result.all_passed, result.to_markdown()


def test_offline_benchmark_names_missing_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    tasks = select_tasks("MIEB(lite)")
    assert len(tasks) == 51
    with pytest.raises(DatasetsUnavailable) as err:
        check_available(tasks)
    assert "46 dataset(s)" in str(err.value) and "mteb/dtd@" in str(err.value) and "(DTD)" in str(err.value)
    assert [t.metadata.name for t in select_tasks(task="DTD")] == ["DTD"]
