"""False negatives in the loss (``loss.mask_duplicates``, ``loss.false_negative_margin``): content keys tell equal
items apart from different ones; masked logits equal a hand computation on crafted batches (also the symmetric
term); 2 gloo ranks with duplicates across ranks equal one process; GradCache keeps the masked loss and gradients."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

from lco.data.collate import item_key, item_keys
from lco.errors import ConfigError
from lco.losses import InfoNCE
from lco.step import Step
from tests.test_packing import _relative, _step_result, _text_records

POS = torch.tensor([10, 11, 10, 12])  # positives 0 and 2 are the same item
NEG = torch.tensor([13, 10, 14, 11])  # anchor 1's negative is positive 0's item; anchor 3's is positive 1's
ANC = torch.tensor([20, 21, 22, 20])  # anchors 0 and 3 are the same item
KEYS = {"anchor": ANC, "positive": POS, "negative": NEG}


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_item_keys_tell_content_apart():
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    same = [{"text": "a cat"}, {"text": "a cat"}, {"image": Image.fromarray(pixels)},
            {"image": Image.fromarray(pixels.copy())}, {"audio": {"array": np.ones(5), "sampling_rate": 16000}},
            {"audio": {"sampling_rate": 16000, "array": np.ones(5)}}]
    keys = item_keys(same)
    assert keys.dtype == torch.int64 and keys[0] == keys[1] and keys[2] == keys[3] and keys[4] == keys[5]
    different = [{"text": "a cat"}, {"text": "a cat "}, {"image": "a cat"}, {"text": "a cat", "image": "x.png"},
                 {"image": "y.png"}, {"image": Image.fromarray(255 - pixels)},
                 {"audio": {"array": np.ones(5), "sampling_rate": 8000}}]
    assert len({item_key(item) for item in different}) == len(different)


def test_duplicates_are_masked_as_by_hand():
    a, p, n = _unit(4, 8, seed=1), _unit(4, 8, seed=2), _unit(4, 8, seed=3)
    loss_fn = InfoNCE(temperature=0.05, mask_duplicates=True)
    loss = loss_fn(a, p, n, keys=KEYS)
    logits = torch.cat([a @ p.T, a @ n.T], dim=1) / 0.05  # columns: p0 p1 p2 p3 n0 n1 n2 n3
    for row, cols in {0: [2, 5], 1: [7], 2: [0, 5]}.items():  # same item as the row's positive, not the positive
        logits[row, cols] = float("-inf")
    expected = F.cross_entropy(logits, torch.arange(4))
    assert loss_fn.masked == 5 and torch.allclose(loss, expected, atol=1e-12)
    assert not torch.allclose(InfoNCE(temperature=0.05)(a, p, n), expected)  # the mask changes the loss

    symmetric = InfoNCE(temperature=0.05, symmetric=True, mask_duplicates=True)(a, p, n, keys=KEYS)
    back = p @ a.T / 0.05
    back[0, 3] = back[3, 0] = float("-inf")  # anchors 0 and 3 are one item
    assert torch.allclose(symmetric, (expected + F.cross_entropy(back, torch.arange(4))) / 2, atol=1e-12)


def test_margin_masks_candidates_scoring_near_the_positive():
    a, p, n = _unit(4, 8, seed=4), _unit(4, 8, seed=5), _unit(4, 8, seed=6)
    loss_fn = InfoNCE(temperature=0.05, false_negative_margin=0.1)
    loss = loss_fn(a, p, n)
    scores = torch.cat([a @ p.T, a @ n.T], dim=1)
    mask = scores > scores.diagonal()[:, None] - 0.1
    mask[range(4), range(4)] = False
    assert 0 < int(mask.sum()) == loss_fn.masked
    expected = F.cross_entropy((scores / 0.05).masked_fill(mask, float("-inf")), torch.arange(4))
    assert torch.allclose(loss, expected, atol=1e-12)
    for bad in (-0.1, 3, True, "0.1"):
        with pytest.raises(ConfigError, match="false_negative_margin"):
            InfoNCE(false_negative_margin=bad)


def _rank_loss(rank, world, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    a, p, n = (t.clone().requires_grad_() for t in (_unit(4, 8, seed=1), _unit(4, 8, seed=2), _unit(4, 8, seed=3)))
    local = slice(2 * rank, 2 * rank + 2)  # positive 0 (rank 0) and 2 (rank 1): duplicates across ranks
    loss_fn = InfoNCE(temperature=0.05, symmetric=True, mask_duplicates=True)
    loss = loss_fn(a[local], p[local], n[local], keys={k: v[local] for k, v in KEYS.items()})
    loss.backward()
    grads = torch.cat([t.grad for t in (a, p, n)])
    dist.all_reduce(grads)  # each rank's slice got its gradient from every rank's loss through the gather
    dist.all_reduce(total := loss.detach().clone())
    if rank == 0:
        torch.save({"loss": total / world, "grads": grads / world, "masked": loss_fn.masked}, out)
    dist.destroy_process_group()


def test_two_ranks_with_duplicates_across_ranks_equal_one_process(tmp_path):
    out = tmp_path / "ranks.pt"
    mp.spawn(_rank_loss, args=(2, str(out), 29500 + (os.getpid() + 11) % 1000), nprocs=2, join=True)
    ranks = torch.load(out)
    a, p, n = (t.clone().requires_grad_() for t in (_unit(4, 8, seed=1), _unit(4, 8, seed=2), _unit(4, 8, seed=3)))
    loss = InfoNCE(temperature=0.05, symmetric=True, mask_duplicates=True)(a, p, n, keys=KEYS)
    loss.backward()
    assert ranks["masked"] > 0 and torch.allclose(ranks["loss"], loss.detach(), atol=1e-12)
    assert torch.allclose(ranks["grads"], torch.cat([t.grad for t in (a, p, n)]), atol=1e-12)


def test_gradcache_keeps_the_masked_loss_and_gradients():
    records = _text_records()
    for i in (1, 5, 9):  # repeated positives, and a hard negative equal to another anchor's positive
        records[i]["positive"] = records[0]["positive"]
    records[3]["negatives"] = [records[4]["positive"]]
    masked = InfoNCE(mask_duplicates=True)
    loss, grads, planned = _step_result("qwen2", "tiny_text", Step(pack=False), records, loss=masked)
    assert masked.masked == 4 * 3 + 1 and planned["keys"]["positive"][1] == planned["keys"]["positive"][0]
    plain, _, _ = _step_result("qwen2", "tiny_text", Step(pack=False), records)
    assert abs(float(plain - loss)) > 1e-3
    for step in (Step(pack=False, cache_chunk=4), Step(pack=True, cache_tokens=96)):
        cached_loss, cached_grads, _ = _step_result("qwen2", "tiny_text", step, records,
                                                    loss=InfoNCE(mask_duplicates=True))
        assert abs(float(cached_loss - loss)) <= 1e-5 * abs(float(loss)) and _relative(cached_grads, grads) <= 1e-5
