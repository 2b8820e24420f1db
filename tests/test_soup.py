"""lco.soup: the soup's delta is the exact weighted mean of LoRA deltas (any ranks/alphas), it loads with peft and
load_embedder, bad inputs fail naming the folder, greedy adds only on a strict gain, and the CLI works."""

import copy
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from lco.callbacks import save_embedder
from lco.errors import ConfigError
from lco.methods.lora import LoRA
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.models.loading import load_embedder
from lco.soup import run
from tests.conftest import compose_train

BASE = ("qwen2_5_omni", "lco-tiny/toy_omni_pretrained")  # the shipped toy thinker: retrieval well above chance
TEXTS = ["A small red cube is at the left.", "There is a blue cone on the top side, and it is large."]


@functools.lru_cache(maxsize=1)
def _loaded():
    return load_backbone(*BASE, dtype="float32")


def backbone():
    """A fresh copy of the base backbone (loaded once per test process)."""
    return dataclasses.replace(_loaded(), model=copy.deepcopy(_loaded().model))


def base_model():
    return backbone().model


def make_adapter(folder, seed: int, r: int, alpha: int, std: float):
    """A real lco LoRA adapter (LoRA applied to the base, saved as lco.train saves it) with random B ~ N(0, std)."""
    embedder = Embedder(backbone())
    method = LoRA(r=r, alpha=alpha, dropout=0.0)
    torch.manual_seed(seed)
    method.apply(embedder)
    generator = torch.Generator().manual_seed(seed)
    for name, param in embedder.model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * std
    return save_embedder(embedder, method, folder)


def edit(src, dst, card=None, tensors=None):
    """A copy of adapter ``src`` with card fields replaced and/or its tensors passed through ``tensors(dict)``."""
    shutil.copytree(src, dst)
    if card:
        path = dst / "lco_embedding.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **card}))
    if tensors:
        path = dst / "adapter_model.safetensors"
        save_file(tensors(load_file(str(path))), str(path))
    return dst


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    made = {"a": make_adapter(root / "a", seed=1, r=4, alpha=8, std=0.05),
            "b": make_adapter(root / "b", seed=2, r=2, alpha=16, std=0.05),  # another rank and alpha
            "c": make_adapter(root / "c", seed=3, r=4, alpha=8, std=0.05),  # same rank and alpha as a
            "bad": make_adapter(root / "bad", seed=4, r=4, alpha=8, std=1.0)}  # destroys retrieval
    made["copy_a"] = edit(made["a"], root / "copy_a")
    made["bad_neg"] = edit(made["bad"], root / "bad_neg",  # its delta is -bad's: their uniform soup is the base
                           tensors=lambda t: {k: -v if ".lora_B." in k else v for k, v in t.items()})
    return made


def soup(tmp_path, folders, *overrides):
    cfg = compose_train(tmp_path, [f"adapters=[{','.join(repr(str(f)) for f in folders)}]", f"out={tmp_path / 'soup'}",
                                   *overrides], config_name="soup")
    return run(cfg), tmp_path / "soup"


def expected_deltas(folders, weights) -> dict[str, torch.Tensor]:
    """sum_i w_i * alpha_i / r_i * B_i @ A_i per adapted layer, in float64, from the input files alone."""
    total = {}
    for folder, w in zip(folders, weights):
        config = json.loads((folder / "adapter_config.json").read_text())
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        for key, a in tensors.items():
            if ".lora_A." in key:
                module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                b = tensors[key.replace(".lora_A.", ".lora_B.")]
                delta = w * config["lora_alpha"] / config["r"] * (b.double() @ a.double())
                total[module] = total.get(module, 0) + delta
    return total


@pytest.mark.parametrize("pair, given, used", [(("a", "c"), None, [0.5, 0.5]), (("a", "b"), [3, 1], [0.75, 0.25])])
def test_soup_delta_is_the_weighted_mean_of_deltas(tmp_path, adapters, pair, given, used):
    folders = [adapters[k] for k in pair]
    entry, out = soup(tmp_path, folders, *([f"weights={given}"] if given else []))
    assert entry["weights"] == used and entry["weights_given"] == given and entry["mode"] == "weighted"
    card = json.loads((out / "lco_embedding.json").read_text())
    assert card["soup"]["weights"] == used and card["soup"]["inputs"] == [str(f.resolve()) for f in folders]
    assert card["pooling"] == "last" and card["method"] == "lora" and card["soup"]["rank"] == sum(entry["ranks"])

    base = dict(base_model().named_parameters())
    merged = dict(PeftModel.from_pretrained(base_model(), str(out)).merge_and_unload().named_parameters())
    expected = expected_deltas(folders, used)
    deviation = max(float((merged[m + ".weight"].double() - base[m + ".weight"].double() - d).abs().max())
                    for m, d in expected.items())
    assert len(expected) == 4 * 7 and deviation < 1e-6, deviation  # 4 layers x 7 projections

    # the same tensors as peft's own exact merge, add_weighted_adapter(combination_type="cat")
    peft_model = PeftModel.from_pretrained(base_model(), str(folders[0]), adapter_name="x")
    peft_model.load_adapter(str(folders[1]), adapter_name="y")
    peft_model.add_weighted_adapter(["x", "y"], used, "cat", combination_type="cat")
    ours = load_file(str(out / "adapter_model.safetensors"))
    theirs = {k.replace(".cat.", "."): v for k, v in peft_model.state_dict().items() if ".cat." in k}
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-9) for k in ours)
    if entry["ranks"][0] == entry["ranks"][1]:  # peft's "linear" is not the mean of the deltas (cross terms)
        peft_model.add_weighted_adapter(["x", "y"], used, "linear", combination_type="linear")
        peft_model.set_adapter("linear")
        linear = dict(peft_model.merge_and_unload(adapter_names=["linear"]).named_parameters())
        assert max(float((linear[m + ".weight"].double() - base[m + ".weight"].double() - d).abs().max())
                   for m, d in expected.items()) > 100 * max(deviation, 1e-8)


def test_soup_loads_and_embeds_as_the_base_with_the_mean_delta(tmp_path, adapters):
    folders = [adapters["a"], adapters["b"]]
    _, out = soup(tmp_path, folders, "weights=[1,2]")
    reference = Embedder(backbone()).eval()
    layers = dict(reference.model.named_modules())
    with torch.no_grad():
        for module, delta in expected_deltas(folders, [1 / 3, 2 / 3]).items():
            layers[module].weight += delta.float()
    ours = load_embedder(out).encode(TEXTS)
    assert torch.allclose(ours, reference.encode(TEXTS), atol=1e-5)
    assert not torch.allclose(ours, load_embedder(adapters["a"]).encode(TEXTS), atol=1e-3)  # not just one input


def drop_one_module(tensors):
    return {k: v for k, v in tensors.items() if ".layers.0.mlp.up_proj." not in k}


def widen_a(tensors):
    key = "base_model.model.model.language_model.layers.1.self_attn.q_proj.lora_A.weight"
    return {**tensors, key: torch.cat([tensors[key], tensors[key][:, :1]], dim=1)}


BROKEN = {  # name: (how to break a copy of adapter a, what the error says besides the folder)
    "base_model": (dict(card={"base_model": "lco-tiny/tiny_text"}), "field 'base_model'"),
    "pooling": (dict(card={"pooling": "mean"}), "field 'pooling'"),
    "method": (dict(card={"method": "full"}), "only LoRA adapters"),
    "missing_safetensors": ("rm", "has no adapter_model.safetensors"),
    "truncated_safetensors": ("truncate", "adapter_model.safetensors cannot be read"),
    "target_layers": (dict(tensors=drop_one_module), "LoRA target layers differ"),
    "shape_vs_base": (dict(tensors=widen_a), "not trained on this base"),
    "not_a_folder": ("absent", "is not a folder"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_bad_inputs_fail_naming_the_folder(tmp_path, adapters, case):
    how, says = BROKEN[case]
    broken = tmp_path / f"broken_{case}"
    if isinstance(how, dict):
        edit(adapters["a"], broken, **how)
    elif how != "absent":
        edit(adapters["a"], broken)
        target = broken / "adapter_model.safetensors"
        if how == "rm":
            target.unlink()
        else:
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(ConfigError) as err:
        soup(tmp_path, [adapters["c"], broken])
    assert str(broken) in str(err.value) and says in str(err.value), str(err.value)
    assert any(fix in str(err.value).lower() for fix in ("leave", "copy", "point adapters=")), str(err.value)
    assert not (tmp_path / "soup").exists()


@pytest.mark.parametrize("overrides, says", [(["weights=[1]"], "has 1 values for 2 adapters"),
                                             (["weights=[1,-1]"], "must be >= 0"),
                                             (["mode=greedy", "weights=[1,1]"], "goes with mode=weighted")])
def test_bad_weights(tmp_path, adapters, overrides, says):
    with pytest.raises(ConfigError, match=says):
        soup(tmp_path, [adapters["a"], adapters["b"]], *overrides)


GREEDY = ["mode=greedy", "val.n=64", "val.split=all"]


def test_greedy_skips_ties_and_harmful_adapters(tmp_path, adapters, capsys):
    folders = [adapters["bad"], adapters["a"], adapters["copy_a"]]
    entry, out = soup(tmp_path, folders, *GREEDY)
    steps = entry["steps"]
    assert [s["adapter"] for s in steps] == [str(adapters[k]) for k in ("a", "copy_a", "bad")]
    assert steps[0]["alone"] == steps[1]["alone"] > steps[2]["alone"] + 0.3  # bad alone is far worse
    assert [s["added"] for s in steps] == [True, False, False]
    assert steps[1]["soup"] == steps[0]["soup"]  # the tie: the copy changes nothing, so it is not added
    assert entry["weights"] == [0.0, 1.0, 0.0] and entry["score"] == steps[0]["alone"]
    card = json.loads((out / "lco_embedding.json").read_text())["soup"]
    assert card["steps"] == steps and card["metric"] == "r1" and "soup_val(n=64" in card["val"]
    assert "not added" in capsys.readouterr().out
    assert torch.allclose(load_embedder(out).encode(TEXTS), load_embedder(adapters["a"]).encode(TEXTS), atol=1e-5)


def test_greedy_adds_an_adapter_that_raises_the_metric(tmp_path, adapters):
    entry, _ = soup(tmp_path, [adapters["bad"], adapters["bad_neg"]], *GREEDY)
    start, step = entry["steps"]
    assert step["added"] and step["soup"] > start["soup"] and entry["weights"] == [0.5, 0.5]


def test_cli_writes_the_soup_and_reports_bad_input(tmp_path, adapters):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lco.soup", f"paths.log_dir={tmp_path / 'logs'}", *args],
                              capture_output=True, text=True, env=env, timeout=300)

    good = cli(f"adapters=[{adapters['a']},{adapters['b']}]", f"out={tmp_path / 'soup'}")
    assert good.returncode == 0, good.stderr[-3000:]
    assert {"adapter_config.json", "adapter_model.safetensors", "lco_embedding.json"} <= {
        p.name for p in (tmp_path / "soup").iterdir()}
    assert "weighted soup of 2 adapters" in good.stdout
    mismatched = edit(adapters["a"], tmp_path / "mean_pooled", card={"pooling": "mean"})
    bad = cli(f"adapters=[{adapters['b']},{mismatched}]", f"out={tmp_path / 'soup2'}")
    assert bad.returncode == 2 and "lco: error:" in bad.stderr and str(mismatched) in bad.stderr, bad.stderr[-3000:]
    assert "Traceback" not in bad.stderr and not (tmp_path / "soup2").exists()


def test_soup_of_moe_expert_adapters_is_the_mean_of_their_deltas(tmp_path):
    """LoRA on the routed experts' fused weights (Qwen3-VL MoE twin, ``method.experts=true``; ranks 2 and 4): the
    soup merged by peft moves every weight, experts included, by the weighted mean of what each input merged by
    peft moves it (peft's own per-expert delta), and ``load_embedder`` serves it."""
    moe = ("qwen3_vl_moe", "lco-tiny/tiny_qwen3_vl_moe")
    folders = []
    for seed, r, alpha in ((1, 2, 8), (2, 4, 4)):
        embedder = Embedder(load_backbone(*moe, dtype="float32"))
        method = LoRA(r=r, alpha=alpha, dropout=0.0, experts=True)
        torch.manual_seed(seed)
        method.apply(embedder)
        with torch.no_grad():
            for name, param in embedder.model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed + len(name)))
        folders.append(save_embedder(embedder, method, tmp_path / f"moe{seed}"))
    entry, out = soup(tmp_path, folders, "weights=[1,3]")
    assert entry["ranks"] == [2, 4]

    def merged(folder=None) -> dict[str, torch.Tensor]:
        model = load_backbone(*moe, dtype="float32").model
        if folder is not None:
            model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        return {k: v.double() for k, v in model.named_parameters()}

    base, ours = merged(), merged(out)
    inputs = [merged(f) for f in folders]
    moved = {k for k in base if not torch.equal(inputs[0][k], base[k])}
    assert {k.split(".layers.0.")[-1] for k in moved if "experts" in k} == {"mlp.experts.gate_up_proj",
                                                                              "mlp.experts.down_proj"}
    deviation = max(float((ours[k] - base[k] - 0.25 * (inputs[0][k] - base[k]) - 0.75 * (inputs[1][k] - base[k]))
                          .abs().max()) for k in base)
    print(f"MoE expert soup: largest deviation from the mean of peft's merged deltas {deviation:.1e}")
    assert deviation < 1e-6, deviation
    texts = load_embedder(out).encode(TEXTS)
    assert texts.shape == (2, 64) and not torch.allclose(texts, load_embedder(folders[0]).encode(TEXTS), atol=1e-3)
