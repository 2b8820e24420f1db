"""Every accepted layout loads to the same records; every bad input names file, line and fix."""

import json

import pandas as pd
import pytest

from lco.data.datamodule import TripletDataModule
from lco.data.records import RecordError
from lco.data.sources import TableSource
from lco.data.synthetic import SceneTriplets

EXPECTED = {"anchor": {"text": "a"}, "positive": {"text": "b"}, "negatives": [{"text": "c"}]}


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_flat_simcse_and_reference_layouts(tmp_path):
    flat = _jsonl(tmp_path / "flat.jsonl", [{"anchor": "a", "positive": "b", "negative": "c"}])
    simcse = tmp_path / "nli.csv"
    pd.DataFrame([{"sent0": "a", "sent1": "b", "hard_neg": "c"}]).to_csv(simcse, index=False)
    parquet = tmp_path / "t.parquet"
    pd.DataFrame([{"anchor": "a", "positive": "b", "negative": "c"}]).to_parquet(parquet)
    for path in (flat, str(simcse), str(parquet)):
        assert TableSource("t", path=path).load() == [EXPECTED]
    ref = _jsonl(tmp_path / "ref.jsonl", [{"anchor": {"text": "a", "image_path": ""},
                                           "positive": {"text": "", "image_path": "img/1.png"},
                                           "negative": {"text": "c", "image_path": ""}}])
    record = TableSource("t", path=ref).load()[0]
    assert record["anchor"] == {"text": "a"} and record["positive"]["image"] == str(tmp_path / "img/1.png")


def test_pairs_without_negatives(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"anchor": "a", "positive": "b"}])
    assert TableSource("t", path=path).load()[0]["negatives"] == []


@pytest.mark.parametrize("lines,message", [
    (['{"anchor": "a", "positive": "b", "negative": "c"}', '{"anchor": "a", "positive"'], "line 2: not valid JSON"),
    (['{"anchor": "a", "negative": "c", "positive": null}'], "line 1: missing field 'positive'"),
    (['{"anchor": "  ", "positive": "b", "negative": "c"}'], "line 1: field 'anchor' is empty"),
    (['{"anchor": 3, "positive": "b", "negative": "c"}'], "line 1: field 'anchor' is int"),
    (['{"anchor": "a", "positive": "b", "negative": "c"}', '{"anchor": "a", "positive": "b"}'],
     "line 2: field 'negative' is missing"),
    (['{"query": "a", "doc": "b"}'], "match no known layout"),
    (['[1, 2]'], "line 1: expected a JSON object"),
])
def test_bad_rows_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError) as err:
        TableSource("t", path=str(path)).load()
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_file_and_column_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.source.path"):
        TableSource("t", path=str(tmp_path / "nope.jsonl")).load()
    path = _jsonl(tmp_path / "q.jsonl", [{"q": "a", "d": "b", "n": "c"}])
    mapped = TableSource("t", path=path, columns={"anchor": "q", "positive": "d", "negative": "n"}).load()
    assert mapped == [EXPECTED]


def test_scenes_are_deterministic_and_negatives_differ_in_one_attribute():
    first, again = SceneTriplets(n=50, seed=3).load(), SceneTriplets(n=50, seed=3).load()
    assert first == again and first != SceneTriplets(n=50, seed=4).load()
    assert all(r["anchor"]["text"] != r["positive"]["text"] for r in first)


def test_datamodule_split_is_seeded_and_disjoint():
    dm = TripletDataModule(SceneTriplets(n=200, seed=0), val_size=30, batch_size=8, seed=1)
    dm.load()
    assert len(dm.val_records) == 30 and len(dm.train_records) == 170
    too_small = TripletDataModule(SceneTriplets(n=10), val_size=2, batch_size=32)
    with pytest.raises(ValueError, match="global batch of 32 x 1 devices"):
        too_small.load()


def test_global_batches_do_not_depend_on_world_size():
    from lco.data.sampler import GlobalBatchSampler

    one = GlobalBatchSampler(50, 8, world_size=1, seed=3)
    two = [GlobalBatchSampler(50, 4, world_size=2, rank=r, seed=3) for r in range(2)]
    for epoch in (0, 1):
        for s in (one, *two):
            s.set_epoch(epoch)
        merged = [a + b for a, b in zip(*two)]
        assert list(one) == merged and len(one) == 6  # 50 // 8, the incomplete batch dropped
    assert list(one) != [list(range(i * 8, i * 8 + 8)) for i in range(6)]
    assert list(GlobalBatchSampler(16, 8, shuffle=False)) == [list(range(8)), list(range(8, 16))]
