"""``python -m lco.mine``: mined negatives equal a brute-force reference (every option, ties, random draws across
chunks); the command on a cross-modal JSONL (image and text anchors, text candidates) writes rows that train,
never mines an anchor's positive or its own content, resumes a cut run to the same file, and refuses bad options
and a foreign output file before loading a model."""

import json

import pytest
import torch
from torch.nn.functional import normalize

from lco.errors import ConfigError
from lco.mine import Window, mine
from tests.conftest import compose_train, run_entry
from tests.media_fixtures import SCENES, caption, write_jsonl


def brute_force(anchors, pool, positive, excluded, window: Window) -> tuple[list[list[int]], list[list[float]]]:
    """The rules of ``lco.mine`` written out per row in float64: rank every candidate but the positive and the
    row's excluded ones (anchor's twin, other positives) by (cosine desc, index asc), keep ranks
    range_min .. range_max-1 passing the score rules, take the first num_negatives."""
    sim = (anchors.double() @ pool.double().T).tolist()
    picked, scores = [], []
    for row, cosines in enumerate(sim):
        pos = cosines[positive[row]]
        ranked = sorted((j for j in range(len(cosines)) if j != positive[row] and j not in excluded[row]),
                        key=lambda j: (-cosines[j], j))[window.range_min: window.range_max]
        ok = [j for j in ranked
              if (window.max_score is None or cosines[j] <= window.max_score)
              and (window.absolute_margin is None or cosines[j] <= pos - window.absolute_margin)
              and (window.relative_margin is None or cosines[j] <= pos * (1 - window.relative_margin))]
        picked.append(ok[: window.num_negatives])
        scores.append([cosines[j] for j in ok[: window.num_negatives]])
    return picked, scores


def problem(seed=0, n=40, m=60, d=8):
    g = torch.Generator().manual_seed(seed)
    pool = normalize(torch.randn(m, d, generator=g), dim=-1)
    positive = torch.randint(0, m, (n,), generator=g)
    anchors = normalize(pool[positive] + 0.7 * torch.randn(n, d, generator=g), dim=-1)  # near their positives
    # every 5th row has an anchor twin in the pool, every 3rd two more positives; the rest pad with -1
    excluded = torch.full((n, 3), -1)
    excluded[::5, 0] = torch.randint(0, m, (len(range(0, n, 5)),), generator=g)
    excluded[::3, 1:] = torch.randint(0, m, (len(range(0, n, 3)), 2), generator=g)
    return anchors, pool, positive, excluded


@pytest.mark.parametrize("window", [
    Window(num_negatives=3),
    Window(num_negatives=4, range_min=5, range_max=20),
    Window(num_negatives=5, max_score=0.3),
    Window(num_negatives=5, absolute_margin=0.2),
    Window(num_negatives=5, relative_margin=0.3, range_min=2),
    Window(num_negatives=60, range_max=1000, absolute_margin=0.1, max_score=0.8),  # short rows: all eligible
], ids=["top", "rank-window", "max-score", "absolute-margin", "relative-margin", "all-rules"])
def test_mined_negatives_equal_a_brute_force_reference(window):
    anchors, pool, positive, same = problem()
    for chunk in (7, 1024):
        picked, scores, pos = mine(anchors, pool, positive, same, window, chunk=chunk)
        expected, expected_scores = brute_force(anchors, pool, positive, same.tolist(), window)
        assert picked == expected
        assert all(abs(a - b) < 1e-6 for row, ref in zip(scores, expected_scores) for a, b in zip(row, ref))
        assert torch.allclose(pos.double(), (anchors * pool[positive]).sum(1).double(), atol=1e-6)
    assert any(len(row) < window.num_negatives for row in picked) == (window.num_negatives == 60)
    assert all(positive[r].item() not in row and not set(same[r].tolist()) & set(row) for r, row in enumerate(picked))


def test_ties_go_to_the_lower_index_and_random_draws_do_not_depend_on_chunks():
    pool = normalize(torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]]), dim=-1)  # six equal candidates
    anchors, positive, same = pool[6:7], torch.tensor([6]), torch.tensor([[-1]])
    picked, _, _ = mine(anchors, pool, positive, same, Window(num_negatives=3, range_min=1))
    assert picked == [[1, 2, 3]]
    anchors, pool, positive, same = problem(seed=1)
    window = Window(num_negatives=3, range_max=20, sampling="random", seed=7)
    whole, _, _ = mine(anchors, pool, positive, same, window, chunk=1024)
    parts = (mine(anchors[:13], pool, positive[:13], same[:13], window, chunk=4)[0]
             + mine(anchors[13:], pool, positive[13:], same[13:], window, chunk=5, first_row=13)[0])
    assert whole == parts  # a resumed run draws what an uninterrupted one did
    eligible, _ = brute_force(anchors, pool, positive, same.tolist(), Window(num_negatives=20, range_max=20))
    assert all(set(row) <= set(ok) and len(row) == 3 for row, ok in zip(whole, eligible))
    assert whole != mine(anchors, pool, positive, same, Window(3, range_max=20))[0]  # not simply the top 3


def test_bad_options_fail_together_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError) as err:
        Window(num_negatives=0, range_min=5, range_max=5, relative_margin=1.5, max_score=float("nan"),
               sampling="best").check()
    for key in ("num_negatives=0", "range_max=5", "relative_margin=1.5", "max_score=nan", "sampling='best'"):
        assert key in str(err.value)
    proc = run_entry("lco.mine", tmp_path, "input.path=missing.jsonl", "model=tiny_vl", "absolute_margin=-inf")
    assert proc.returncode == 2 and "lco: error:" in proc.stderr and "absolute_margin=-inf" in proc.stderr
    assert "Loading weights" not in proc.stderr


def _rows(media) -> list[dict]:
    """Image anchors for scenes 0-3 and text anchors for 4-7: the candidates are all text (the positives)."""
    root, files = media
    rows = []
    for i in range(8):
        scene = SCENES[i % 4]
        anchor = {"text": "", "image_path": str(root / files["image"][i])} if i < 4 else f"Seen: {caption(scene)}"
        rows.append({"anchor": anchor, "positive": f"{caption(scene)} (take {i // 4})", "negative": "Nothing."})
    rows[7]["positive"] = [rows[7]["positive"], "The same scene, told again."]  # several positives
    return rows


def test_mining_a_cross_modal_file_writes_rows_that_train_and_resumes(tmp_path, media):
    from lco.data.sources import TableSource
    from lco.mine import run

    data = write_jsonl(tmp_path / "rows.jsonl", _rows(media))
    out = tmp_path / "mined.jsonl"
    args = [f"input.path={data}", "input.allow_outside_root=true", "model=tiny_vl", f"out={out}", "num_negatives=2",
            "chunk=3", "batch_size=4"]
    summary = run(compose_train(tmp_path / "a", args, config_name="mine"))
    assert (summary["rows"], summary["pool"], summary["written"], summary["mined"]) == (8, 9, 8, 16)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for source, row in zip(_rows(media), rows):
        assert row["anchor"] == source["anchor"] and row["positive"] == source["positive"]  # absolute paths kept
        assert len(row["negatives"]) == 2 and all(isinstance(n, str) for n in row["negatives"])  # text candidates
        positives = row["positive"] if isinstance(row["positive"], list) else [row["positive"]]
        assert not set(positives) & set(row["negatives"]) and row["anchor"] not in row["negatives"]
    records = TableSource("mined", path=str(out), allow_outside_root=True).load()
    assert len(records) == 8 and {len(r["negatives"]) for r in records} == {2}
    assert records[7]["positives"] == [{"text": t} for t in _rows(media)[7]["positive"]]
    assert "image" in records[0]["anchor"] and records[0]["anchor"]["image"].endswith(".png")

    first = out.read_text()
    lines = first.splitlines(keepends=True)
    # cut after the first chunk of 3 rows and half of the next row, as a killed run would leave it
    out.write_text("".join(lines[:4])[: -len(lines[3]) // 2])
    progress = json.loads(out.with_name("mined.jsonl.progress.json").read_text())
    out.with_name("mined.jsonl.progress.json").write_text(json.dumps(
        {**progress, "rows_done": 3, "bytes": len("".join(lines[:3]).encode())}))
    resumed = run(compose_train(tmp_path / "b", args, config_name="mine"))
    assert resumed["resumed_after"] == 3 and out.read_text() == first
    with pytest.raises(ConfigError, match="not mined from this input"):
        run(compose_train(tmp_path / "c", args[:-3] + ["num_negatives=1"], config_name="mine"))
