"""The toy world: scene splits, generative documents, and a short pretraining that learns."""

import itertools
import random

import torch

from lco.data.documents import DocumentCollator, SceneDocuments, make_document, toy_vocabulary
from lco.data.synthetic import ATTRIBUTES, SceneTriplets, held_out, random_scene
from lco.prompts import Prompter


def test_held_out_split_is_disjoint_and_deterministic():
    combos = [dict(zip(ATTRIBUTES, v)) for v in itertools.product(*ATTRIBUTES.values())]
    assert len(combos) == 320 and sum(map(held_out, combos)) == 53
    rng = random.Random(0)
    assert not any(held_out(random_scene(rng, "train")) for _ in range(500))
    assert all(held_out(random_scene(rng, "test")) for _ in range(500))
    assert SceneTriplets(n=20, split="test").load() == SceneTriplets(n=20, split="test").load()


def test_documents_put_labels_only_on_targets(tiny_backbone):
    backbone = tiny_backbone("tiny_omni")
    tokenizer = backbone.tokenizer
    rng = random.Random(0)
    scene = {"colour": "red", "shape": "cube", "size": "small", "position": "left"}
    docs = [make_document(kind, scene, rng) for kind in ("caption", "text", "summary_image", "summary_text")]
    batch = DocumentCollator(backbone.processor, Prompter())(docs)
    for row, doc in enumerate(docs):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert tokenizer.decode(labelled) == doc["target"]
    summary = docs[2]["target"].removesuffix("<|im_end|>")
    assert summary in scene.values()
    vocab = set(toy_vocabulary(tokenizer))
    assert all(t in vocab for t in batch["labels"][batch["labels"] != -100].tolist())
    assert 40 < len(vocab) < 120


def test_short_pretraining_lowers_caption_loss_and_raises_summary_mass(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from lco.pretrain import GenerativeModule, run
    from lco.cli import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=["model=tiny_omni", "steps=60", "val_every=60",
                                                         "val_documents=64", "batch_size=16", "lr=3e-3",
                                                         "snapshots=[30]"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]

    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    pl.seed_everything(0)
    backbone = instantiate(cfg.model)
    val = DataLoader(SceneDocuments(dict(cfg.documents), "test", 1, n=64), batch_size=16,
                     collate_fn=DocumentCollator(backbone.processor, Prompter()))
    before = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
        GenerativeModule(backbone), val, verbose=False)[0]
    after = run(cfg)
    assert after["val/caption_loss"] < 0.8 * before["val/caption_loss"], (before, after)
    for kind in ("image", "text"):
        assert after[f"val/summary_mass_{kind}"] > before[f"val/summary_mass_{kind}"] + 0.05, (before, after)
    model_dir = tmp_path / "model"
    assert (model_dir / "config.json").exists() and (model_dir / "processor_config.json").exists()
    assert (tmp_path / "model_step30" / "model.safetensors").exists()  # snapshot for the scaling check
    from lco.models.backbone import load_backbone

    reloaded = load_backbone("qwen2_5_omni", str(model_dir))  # the folder works as model.path
    vocab = toy_vocabulary(reloaded.tokenizer)
    trained, untrained = reloaded.model.get_output_embeddings().weight, backbone.model.get_output_embeddings().weight
    assert not torch.equal(trained[vocab], untrained[vocab])  # the toy rows moved


def test_document_loss_weighs_every_document_once(tiny_backbone):
    import torch.nn.functional as F

    from lco.pretrain import GenerativeModule

    backbone = tiny_backbone("tiny_omni")
    rng = random.Random(0)
    scene = {"colour": "red", "shape": "cube", "size": "small", "position": "left"}
    docs = [make_document(kind, scene, rng) for kind in ("caption", "summary_text")]
    batch = DocumentCollator(backbone.processor, Prompter())(docs)
    module = GenerativeModule(backbone, loss_per="document")
    module.log = lambda *a, **k: None
    logits, targets, rows = module._logits(batch)
    per_doc = [F.cross_entropy(logits[rows == r], targets[rows == r]) for r in (0, 1)]
    assert torch.allclose(module.training_step(batch, 0), (per_doc[0] + per_doc[1]) / 2, atol=1e-6)
    module.loss_per = "token"
    assert torch.allclose(module.training_step(batch, 0), F.cross_entropy(logits, targets), atol=1e-6)
    import pytest

    with pytest.raises(ValueError, match="loss_per"):
        GenerativeModule(backbone, loss_per="sentence")
