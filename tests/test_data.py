"""Every accepted layout loads to the same records; every bad input names file, line and fix."""

import json

import pandas as pd
from PIL import Image as SceneImage
import pytest

from lco.data.datamodule import TripletDataModule
from lco.data.sources import TableSource
from lco.data.synthetic import SceneTriplets
from lco.errors import RecordError

EXPECTED = {"anchor": {"text": "a"}, "positive": {"text": "b"}, "negatives": [{"text": "c"}]}


def _strip(record):
    return {k: v for k, v in record.items() if k != "origin"}


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
        assert [_strip(r) for r in TableSource("t", path=path).load()] == [EXPECTED]
    (tmp_path / "img").mkdir()
    SceneImage.new("RGB", (8, 8)).save(tmp_path / "img" / "1.png")
    ref = _jsonl(tmp_path / "ref.jsonl", [{"anchor": {"text": "a", "image_path": ""},
                                           "positive": {"text": "", "image_path": "img/1.png"},
                                           "negative": {"text": "c", "image_path": ""}}])
    record = TableSource("t", path=ref).load()[0]
    assert record["origin"] == f"{ref}, line 1"
    assert record["anchor"] == {"text": "a"} and record["positive"]["image"] == str(tmp_path / "img/1.png")


def test_pairs_without_negatives(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"anchor": "a", "positive": "b"}])
    assert TableSource("t", path=path).load()[0]["negatives"] == []
    many = _jsonl(tmp_path / "m.jsonl", [{"anchor": "a", "positive": "b", "negatives": ["c", "d"]}])
    assert [n["text"] for n in TableSource("t", path=many).load()[0]["negatives"]] == ["c", "d"]


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
    with pytest.raises(FileNotFoundError, match="data.sources.t.path"):
        TableSource("t", path=str(tmp_path / "nope.jsonl")).load()
    path = _jsonl(tmp_path / "q.jsonl", [{"q": "a", "d": "b", "n": "c"}])
    mapped = TableSource("t", path=path, columns={"anchor": "q", "positive": "d", "negative": "n"}).load()
    assert [_strip(r) for r in mapped] == [EXPECTED]


def test_scenes_are_deterministic_and_negatives_differ_in_one_attribute():
    first, again = SceneTriplets(n=50, seed=3).load(), SceneTriplets(n=50, seed=3).load()
    assert first == again and first != SceneTriplets(n=50, seed=4).load()
    assert all(r["anchor"]["text"] != r["positive"]["text"] for r in first)


def test_datamodule_split_is_seeded_and_disjoint():
    dm = TripletDataModule({"scenes": SceneTriplets(n=200, seed=0)}, val_size=30, batch_size=8, seed=1,
                           num_workers=0)
    dm.load()
    assert len(dm.val_records) == 30 and len(dm.records["scenes"]) == 170
    texts = {r["anchor"]["text"] + r["positive"]["text"] for r in dm.records["scenes"]}
    assert not any(r["anchor"]["text"] + r["positive"]["text"] in texts for r in dm.val_records)
    too_small = TripletDataModule({"scenes": SceneTriplets(n=10)}, val_size=2, batch_size=32, num_workers=0)
    with pytest.raises(RecordError, match="fewer than one batch"):
        too_small.load()


def test_item_texts_are_cut_to_max_text_tokens_in_one_batch(tiny_backbone):
    from lco.preprocess import Preprocessor
    from lco.prompts import Prompter

    backbone = tiny_backbone("tiny_text")
    encoder = Preprocessor(backbone.processor, Prompter(), max_text_tokens=4)
    long = "one two three four five six seven eight"
    cut = encoder.truncate([long, "short", long + " nine"])
    assert cut[1] == "short" and cut[0] == cut[2]
    assert len(encoder.tokenizer(cut[0], add_special_tokens=False)["input_ids"]) == 4 and long.startswith(cut[0])
    prompts = encoder.prompts([{"text": long}, {"text": "short"}])
    assert prompts == [Prompter().render(backbone.processor, {"text": cut[0]}),
                       Prompter().render(backbone.processor, {"text": "short"})]


ROW = '{"anchor": "a", "positive": "b", "negative": "c"}'


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_byte_order_mark_and_crlf_load_like_plain_utf8(tmp_path, suffix):
    path = tmp_path / f"bom{suffix}"
    body = (ROW + "\r\n" + ROW.replace('"a"', '"é"') + "\r\n") if suffix == ".jsonl" else "anchor,positive,negative\r\na,b,c\r\né,b,c\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    records = [_strip(r) for r in TableSource("t", path=str(path)).load()]
    assert records == [EXPECTED, {**EXPECTED, "anchor": {"text": "é"}}]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_line_that_is_not_utf8_is_a_row_error_that_skip_drops(tmp_path, suffix):
    from lco.data.records import ErrorPolicy

    path = tmp_path / f"latin1{suffix}"
    header = b"anchor,positive,negative\n" if suffix == ".csv" else b""
    good = (ROW if suffix == ".jsonl" else "a,b,c").encode()
    bad = (ROW.replace('"a"', '"caf\xe9"') if suffix == ".jsonl" else "caf\xe9,b,c").encode("latin-1")
    path.write_bytes(header + b"\n".join([good] * 150 + [bad] + [good] * 49) + b"\n")
    line = 151 + (suffix == ".csv")
    with pytest.raises(RecordError, match=rf"latin1{suffix}, line {line}: not UTF-8 \(byte 0xe9 at column"):
        TableSource("t", path=str(path)).load()
    kept = TableSource("t", path=str(path)).load(ErrorPolicy("skip", max_skip_fraction=0.01))
    assert len(kept) == 199 and all(_strip(r) == EXPECTED for r in kept)
