"""Analysis metrics on inputs with known answers; retrieval recall; the analyze command; loading a run."""

import csv

import pytest
import torch

from lco.analysis.metrics import anisotropy, knn_sets, mutual_knn_alignment
from lco.errors import NonFiniteEmbeddings
from lco.analysis.retrieval import directional_recalls, recall_at
from tests.conftest import compose_train


def test_anisotropy_known_values():
    assert anisotropy(torch.eye(16)) == pytest.approx(0.0, abs=1e-12)  # orthogonal one-hot rows
    assert anisotropy(torch.ones(5, 3)) == pytest.approx(1.0)           # all rows the same direction
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert anisotropy(x) == pytest.approx(-1.0)


def test_mutual_knn_alignment_known_values():
    torch.manual_seed(0)
    a = torch.randn(400, 32)
    assert mutual_knn_alignment(a, a.clone(), k=10) == pytest.approx(1.0)
    assert mutual_knn_alignment(a, 3.0 * a, k=10) == pytest.approx(1.0)  # cosine: scale does not matter
    shuffled = a[torch.randperm(400)]
    chance = 10 / 399
    assert abs(mutual_knn_alignment(a, shuffled, k=10) - chance) < 0.02
    with pytest.raises(ValueError, match="same number of rows"):
        mutual_knn_alignment(a, a[:10])


def test_non_finite_rows_are_refused_by_name():
    torch.manual_seed(0)
    a = torch.randn(50, 8)
    bad = a.clone()
    bad[7, 3], bad[20, 0] = float("nan"), float("inf")
    assert int(torch.tensor([0.5, float("nan"), 0.9]).topk(1).indices) == 1  # topk ranks NaN first: the hazard
    with pytest.raises(NonFiniteEmbeddings, match=r"b \(the second space\) has 2 of 50 rows .*rows \[7, 20\]"):
        mutual_knn_alignment(a, bad, k=5)
    with pytest.raises(NonFiniteEmbeddings, match=r"rows \[7, 20\]"):
        anisotropy(bad)


def test_knn_ties_go_to_the_lower_index():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, 1.0], [3.0, 0.0]])  # rows 1-3 and 0, 4: one direction
    assert knn_sets(x, 2).tolist() == [[4, 1], [2, 3], [1, 3], [1, 2], [0, 1]]
    torch.manual_seed(1)
    grid = torch.randint(-1, 2, (60, 3)).float()  # many exact cosine ties
    sims = torch.nn.functional.normalize(grid.double(), dim=-1) @ torch.nn.functional.normalize(grid.double(), dim=-1).T
    expected = [sorted((j for j in range(60) if j != i), key=lambda j: (-float(sims[i, j]), j))[:7] for i in range(60)]
    assert knn_sets(grid, 7).tolist() == expected


def test_recall_matches_hand_computation():
    q = torch.eye(4)
    assert recall_at(q, q) == {1: 1.0, 5: 1.0}
    swapped = q[[1, 0, 2, 3]]  # queries 0 and 1 find each other's target first
    assert recall_at(q, swapped, ks=(1, 2)) == {1: 0.5, 2: 0.5}
    near = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert recall_at(near, near, ks=(1,))[1] == pytest.approx(2 / 3)  # dot product: row 1 prefers row 0
    unit = torch.nn.functional.normalize(near, dim=-1)
    assert recall_at(unit, unit, ks=(1,))[1] == 1.0  # cosine: every row finds itself
    out = directional_recalls(torch.eye(4), torch.eye(4), ["text", "text", "image", "image"],
                              ["text", "text", "text", "text"])
    assert set(out) == {"t2t_r1", "t2t_r5", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}


def test_load_embedder_reproduces_the_run_and_analyze_writes_files(tmp_path):
    from lco.analyze import run as analyze
    from lco.models.loading import load_embedder
    from lco.train import run as train

    train_dir = tmp_path / "train"
    train(compose_train(train_dir, ["model=tiny_vl", "data=scenes_mm", "debug=limit", "logger=none",
                                    "data.sources.scenes.n=128", "data.sources.scene_images.n=128",
                                    "data.batch_size=8"]))
    adapter = train_dir / "adapter"
    loaded = load_embedder(adapter)
    again = load_embedder(adapter)
    items = ["A small red cube is at the left.", {"image": str(next(iter(_scene_images())))}]
    assert torch.allclose(loaded.encode(items), again.encode(items))

    cfg = compose_train(tmp_path / "analysis", [f"checkpoints=[{adapter}]", "pairs.n=64"], config_name="analyze")
    rows = analyze(cfg)
    assert [(r["checkpoint"], r["layer"]) for r in rows] == [("base", 0), ("base", 1), ("base", 2),
                                                               (str(adapter), 0), (str(adapter), 1), (str(adapter), 2)]
    with (tmp_path / "analysis" / "analysis.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 6
    for metric in ("alignment", "anisotropy_anchor", "anisotropy_positive"):
        assert (tmp_path / "analysis" / f"{metric}.png").stat().st_size > 1000
    assert all(0.0 <= r["alignment"] <= 1.0 for r in rows)
    base_final, trained_final = rows[2], rows[5]
    assert base_final != trained_final  # the adapter changed the geometry


def _scene_images():
    from lco.cache import cache_root

    return (cache_root() / "scenes").glob("*.png")
