import pytest
import torch
import torch.nn.functional as F

from lco.losses import InfoNCE


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_infonce_equals_hand_computation_with_negatives():
    torch.manual_seed(0)
    a, p, n = _unit(4, 8), _unit(4, 8), _unit(8, 8)  # two negatives per anchor
    loss = InfoNCE(temperature=0.05)(a, p, n)
    logits = torch.cat([a @ p.T, a @ n.T], dim=1) / 0.05
    expected = -torch.log_softmax(logits, dim=1).diagonal().mean()
    assert torch.allclose(loss, expected.to(loss.dtype), atol=1e-6)


def test_perfect_embeddings_give_near_zero_loss_and_symmetric_averages():
    a = torch.eye(4)
    assert InfoNCE(temperature=0.01)(a, a.clone()).item() < 1e-6
    a, p = _unit(5, 6), _unit(5, 6)
    one = InfoNCE(temperature=0.1)(a, p)
    other = InfoNCE(temperature=0.1)(p, a)
    sym = InfoNCE(temperature=0.1, symmetric=True)(a, p)
    assert torch.allclose(sym, (one + other) / 2)


def test_learnable_temperature_gets_a_gradient_and_is_clamped():
    loss_fn = InfoNCE(temperature=0.03, learnable=True, max_scale=20.0)
    a, p = _unit(4, 8).float().requires_grad_(), _unit(4, 8).float()
    loss_fn(a, p).backward()
    assert loss_fn.log_scale.grad is not None
    fixed = InfoNCE(temperature=0.03)
    assert not fixed.log_scale.requires_grad and abs(fixed.temperature - 0.03) < 1e-7
    # scale clamped at 20 (temperature 0.05) even though 1/0.03 = 33
    ref = InfoNCE(temperature=0.05)(a.detach(), p)
    assert torch.allclose(loss_fn(a.detach(), p), ref)


@pytest.mark.parametrize("learnable", [True, False])
def test_temperature_is_logged_when_it_is_learned(tmp_path, learnable):
    """train/temperature is a metric only when it can change; a fixed one is in the run's config.yaml."""
    from lco.train import run
    from tests.conftest import compose_train

    cfg = compose_train(tmp_path, ["model=tiny_text", "data=scenes", "data.sources.scenes.n=64", "data.batch_size=4",
                                   "trainer=cpu", "logger=none", "debug=fdr", f"loss.learnable={learnable}"])
    metrics, built = run(cfg)
    assert ("train/temperature" in metrics) == learnable
    loss_fn = built["module"].loss_fn
    assert loss_fn.log_scale.requires_grad is learnable and loss_fn.temperature == pytest.approx(0.03, rel=1e-5)
    if learnable:  # logged in the one step (debug=fdr; the warmup's first learning rate is 0)
        assert metrics["train/temperature"] == pytest.approx(0.03, rel=1e-5)
