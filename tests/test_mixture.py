"""Mixes: homogeneous batches in weight proportion, seeded, world-size independent, resumable; streaming; skip."""

import itertools
import json
import logging

import pytest
from torch.utils.data import DataLoader

from lco.data.datamodule import TripletDataModule
from lco.data.mixture import MixtureBatches, ResumableLoader, SourceReader, source_schedule
from lco.data.records import ErrorPolicy
from lco.data.sources import TableSource
from lco.errors import RecordError


def _records(tag, n):
    return [{"anchor": {"text": f"{tag}{i}"}, "positive": {"text": "p"}, "negatives": [], "origin": f"{tag}:{i}"}
            for i in range(n)]


def _ids(batch):  # the collate below keeps records as they are
    return [r["origin"] for r in batch]


def _mixture(world=1, rank=0, batch=4, seed=0, steps=40, weights=(3, 1)):
    readers = {"a": SourceReader("a", _records("a", 100)), "b": SourceReader("b", _records("b", 30))}
    return MixtureBatches(readers, {"a": weights[0], "b": weights[1]}, batch, steps, list, world, rank, seed)


def test_batches_are_homogeneous_and_in_weight_proportion():
    batches = [_ids(b) for b in _mixture()]
    assert len(batches) == 40
    sources = [{i.split(":")[0] for i in b} for b in batches]
    assert all(len(s) == 1 for s in sources)
    assert sum(s == {"a"} for s in sources) == 30 and sum(s == {"b"} for s in sources) == 10
    # the small source restarts (new permutation) once exhausted, never repeating within a pass
    b_ids = [i for b in batches if b[0].startswith("b") for i in b]
    assert len(set(b_ids[:30])) == 30 and len(b_ids) == 40


def test_deterministic_under_seed_and_new_order_each_epoch():
    one, again, other = _mixture(seed=1), _mixture(seed=1), _mixture(seed=2)
    assert [_ids(b) for b in one] == [_ids(b) for b in again] != [_ids(b) for b in other]
    first = [_ids(b) for b in one]
    one.epoch = 1
    assert [_ids(b) for b in one] != first


def test_world_size_does_not_change_global_batches():
    single = [_ids(b) for b in _mixture(batch=8)]
    ranks = [[_ids(b) for b in _mixture(world=2, rank=r, batch=4)] for r in range(2)]
    assert single == [a + b for a, b in zip(*ranks)]


def test_resume_mid_epoch_yields_the_rest_exactly():
    full = [_ids(b) for b in _mixture()]
    loader = ResumableLoader(_mixture())
    seen = [_ids(b) for b in itertools.islice(iter(loader), 13)]
    state = loader.state_dict()
    assert state == {"epoch": 0, "step": 13}
    resumed = ResumableLoader(_mixture())
    resumed.load_state_dict(state)
    assert seen + [_ids(b) for b in resumed] == full
    assert [_ids(b) for b in resumed] == full  # the next epoch starts from step 0 again


def test_workers_keep_step_order():
    plain = [_ids(b) for b in _mixture()]
    with_workers = [_ids(b) for b in DataLoader(_mixture(), batch_size=None, num_workers=2)]
    assert with_workers == plain


def test_schedule_rounding_is_exact():
    schedule = source_schedule({"x": 0.8, "y": 0.2}, 11, seed=0, epoch=0)
    assert len(schedule) == 11 and schedule.count("x") == 9 and schedule.count("y") == 2


def test_streamed_source_is_read_lazily_and_mixes(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"anchor": f"s{i}", "positive": "p", "negative": "n"}) + "\n"
                            for i in range(500)))
    source = TableSource("big", path=str(path), streaming=True)
    stream = source.stream()
    assert next(stream)["anchor"]["text"] == "s0"  # a generator: nothing else read yet
    dm = TripletDataModule({"big": source, "small": TableSource("small", path=str(path), limit=50)},
                           weights={"big": 1, "small": 1}, batch_size=10, steps_per_epoch=8, val_size=0,
                           num_workers=0)
    dm.load()
    assert "big" not in dm.records and len(dm.records["small"]) == 50
    dm.collator = list
    batches = list(dm.train_batches())
    assert len(batches) == 8 and all(len(b) == 10 for b in batches)
    assert sum(b[0]["origin"].startswith(str(path)) for b in batches) == 8
    assert {r["source"] for b in batches for r in b} == {"big", "small"}  # each record knows its source (prompts)


def test_stream_of_unknown_size_needs_steps_per_epoch(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"anchor": "a", "positive": "b"}) + "\n")
    dm = TripletDataModule({"s": TableSource(path=str(path), streaming=True)}, batch_size=1, val_size=0,
                           num_workers=0)
    with pytest.raises(RecordError, match="data.steps_per_epoch"):
        dm.load()


def test_skip_counts_bad_rows_and_fails_past_the_limit(tmp_path, caplog):
    rows = [json.dumps({"anchor": "a", "positive": "b"})] * 98 + ['{"anchor": ', json.dumps({"anchor": 1, "positive": "b"})]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(RecordError, match="line 99: not valid JSON"):
        TableSource("d", path=str(path)).load()
    policy = ErrorPolicy("skip", max_skip_fraction=0.05, source="d")
    with caplog.at_level(logging.WARNING):
        records = TableSource("d", path=str(path)).load(policy)
    assert len(records) == 98 and policy.skipped == 2 and "skipped 2 of 100 rows" in caplog.text
    with pytest.raises(RecordError, match="more than data.max_skip_fraction=0.01"):
        TableSource("d", path=str(path)).load(ErrorPolicy("skip", 0.01, "d"))


def test_lightning_checkpoints_the_loader_position(tmp_path):
    import torch

    from lco.train import run
    from tests.conftest import compose_train

    cfg = compose_train(tmp_path, ["trainer.max_steps=5", "callbacks.model_checkpoint.every_n_train_steps=3",
                                   "validate_before=false", "logger=none", "data.sources.scenes.n=256",
                                   "data.batch_size=8", "model=tiny_text", "data=scenes"])
    run(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "step000003.ckpt", weights_only=False)
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "step": 3}]


def test_review_fixes_for_mixed_sources(tmp_path):
    """Sources with different negative counts validate together; a source needs a weight; a row whose negative
    count differs from its source's fails at read time, naming the line."""
    from lco.data.synthetic import SceneTriplets

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": f"a{i}", "positive": "p"}) + "\n" for i in range(40)))
    dm = TripletDataModule({"scenes": SceneTriplets(n=40), "pairs": TableSource(path=str(pairs))},
                           weights={"scenes": 1, "pairs": 1}, batch_size=4, val_size=16, val_batch_size=5,
                           num_workers=0)
    dm.load()
    dm.collator = lambda records: {len(r["negatives"]) for r in records}
    assert all(len(counts) == 1 for counts in dm.val_dataloader())
    with pytest.raises(RecordError, match=r"data.sources \['pairs'\] have no weight"):
        TripletDataModule({"scenes": SceneTriplets(n=40), "pairs": TableSource(path=str(pairs))}, weights={"scenes": 1},
                          val_size=0, batch_size=4, num_workers=0)
    uneven = tmp_path / "uneven.jsonl"
    uneven.write_text(json.dumps({"anchor": "a", "positive": "b", "negatives": ["c", "d"]}) + "\n"
                      + json.dumps({"anchor": "a", "positive": "b", "negatives": ["c"]}) + "\n")
    with pytest.raises(RecordError, match="line 2: 1 negatives where earlier rows have 2"):
        TableSource("u", path=str(uneven)).load()


def test_streamed_only_data_trains_without_validation(tmp_path):
    from lco.train import run
    from tests.conftest import compose_train

    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"anchor": f"a{i}", "positive": f"p{i}"}) + "\n" for i in range(32)))
    cfg = compose_train(tmp_path, ["data=jsonl", f"data.sources.jsonl.path={path}", "data.sources.jsonl.streaming=true",
                                   "data.steps_per_epoch=2", "data.batch_size=4", "data.num_workers=0",
                                   "trainer.max_epochs=1", "logger=none", "model=tiny_text"])
    metrics, built = run(cfg)
    assert built["trainer"].global_step == 2 and len(built["module"].history["train/loss"]) == 2  # steps_per_epoch
    assert "val/r1" not in metrics and not built["datamodule"].val_records


def _positives(batch):
    return [(r["origin"], r["positive"]["text"]) for r in batch]


def test_several_positives_are_read_in_turn_over_passes_and_resume_exactly(tmp_path):
    """A row may give a list of positives (``positive`` as a list, or a ``positives`` column): training uses one
    per pass, in turn from a seeded start, so every one is used, and a resumed run picks what an uninterrupted did."""
    from lco.data.mixture import pick_positive

    path = tmp_path / "multi.jsonl"
    path.write_text("".join(json.dumps({"anchor": f"q{i}", "positives": [f"q{i}-p{j}" for j in range(3)],
                                        "negative": "n"}) + "\n" for i in range(8)))
    records = TableSource("multi", path=str(path)).load()
    assert [p["text"] for p in records[0]["positives"]] == ["q0-p0", "q0-p1", "q0-p2"]
    assert records[0]["positive"] == {"text": "q0-p0"}  # validation uses the first
    turns = [pick_positive(records[0], seed=0, turn=t)["positive"]["text"] for t in range(6)]
    assert sorted(turns[:3]) == ["q0-p0", "q0-p1", "q0-p2"] and turns[3:] == turns[:3]

    def mixture():  # 8 rows, batches of 4: each step is half a pass, so 6 steps are 3 passes
        return MixtureBatches({"multi": SourceReader("multi", records)}, {"multi": 1}, 4, 6, list, 1, 0, 5)

    full = [_positives(b) for b in mixture()]
    per_row: dict[str, set] = {}
    for origin, positive in (pair for batch in full for pair in batch):
        per_row.setdefault(origin, set()).add(positive)
    assert all(len(used) == 3 for used in per_row.values())  # every positive of every row, once each
    loader = ResumableLoader(mixture())
    seen = [_positives(b) for b in itertools.islice(iter(loader), 3)]
    resumed = ResumableLoader(mixture())
    resumed.load_state_dict(loader.state_dict())
    assert seen + [_positives(b) for b in resumed] == full


@pytest.mark.parametrize("row,message", [
    ({"anchor": "a", "positive": [], "negative": "n"}, "field 'positive' is an empty list"),
    ({"anchor": "a", "positive": "p", "positives": ["q"]}, "both a 'positive' and a 'positives' column"),
])
def test_bad_positive_lists_name_the_line(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(RecordError, match=message):
        TableSource("bad", path=str(path)).load()
