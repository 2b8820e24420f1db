"""``module.compile=true`` through ``python -m lco.train``: the decoder layers are compiled one by one (regional
torch.compile, dynamic shapes), and two SGD steps on packed batches of different lengths end on the eager run's
LoRA weights."""

from tests.test_ddp import _train_one_step


def test_compiled_layers_train_as_eager(tmp_path):
    packed, console = ("step.pack=true", "step.pack_tokens=128"), []
    eager = _train_one_step(tmp_path / "eager", "cpu", 8, packed, steps=2)
    compiled = _train_one_step(tmp_path / "compiled", "cpu", 8, (*packed, "module.compile=true"), steps=2,
                               output=console)
    assert "module.compile=true: 2 decoder layers compiled one by one" in console[0]
    assert compiled.keys() == eager.keys() and any("lora_B" in k for k in eager)
    for key, value in eager.items():  # lr 1 amplifies float noise, as in tests/test_ddp.py
        assert float((compiled[key] - value).abs().max()) <= 1e-4 * float(value.abs().max()), key
