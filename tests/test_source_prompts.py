"""Per-source prompts (``preprocess.source_prompts.<source>``): a source's instruction, system turn and suffixes go
on the record sides it names and nowhere else; they are checked with the config (before anything loads), recorded
in the card, and ``Embedder.encode(prompt_name=...)`` serves them after loading the trained folder; a run trains
with them from the command line."""

import json

import pytest
import torch

from lco.config import check_config
from lco.data.collate import TripletCollator
from lco.errors import ConfigError
from lco.models.embedder import Embedder
from lco.preprocess import Preprocessor
from lco.prompts import Prompter
from tests.conftest import compose_train, run_entry

INSTRUCTION = "Find a paraphrase of this scene: "
QWEN25 = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"
RECORDS = [{"anchor": {"text": "a red cube"}, "positive": {"text": "red cube, left"},
            "negatives": [{"text": "a blue cube"}], "source": "scenes"},
           {"anchor": {"text": "a green cone"}, "positive": {"text": "green cone, top"},
            "negatives": [{"text": "a green cube"}], "source": "nli"}]


def decoded(pre: Preprocessor, batch) -> list[str]:
    return [pre.tokenizer.decode(row[mask.bool()]) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_a_sources_prompt_goes_on_its_sides_only(tiny_backbone):
    backbone = tiny_backbone("tiny_text")
    pre = Preprocessor(backbone.processor, Prompter(), source_prompts={
        "scenes": {"instruction": INSTRUCTION, "suffixes": {"text": "\nOne word:"}},
        "nli": {"system": "Embed for retrieval.", "sides": ["anchor", "positive", "negatives"]}})
    batch = TripletCollator(pre)(RECORDS)
    anchor, positive, negative = (decoded(pre, batch[side]) for side in ("anchor", "positive", "negative"))
    assert anchor[0] == f"{QWEN25}{INSTRUCTION}a red cube\nOne word:{TAIL}"  # scenes: anchors only
    assert positive[0] == f"{QWEN25}red cube, left\nSummarize the above text in one word:{TAIL}"
    assert negative[0] == f"{QWEN25}a blue cube\nSummarize the above text in one word:{TAIL}"
    nli = "<|im_start|>system\nEmbed for retrieval.<|im_end|>\n<|im_start|>user\n"
    assert [anchor[1], positive[1], negative[1]] == [
        f"{nli}{text}\nSummarize the above text in one word:{TAIL}" for text in ("a green cone", "green cone, top",
                                                                                "a green cube")]
    # the content keys the loss masks duplicates by do not depend on the prompt
    plain = TripletCollator(Preprocessor(backbone.processor, Prompter()))(RECORDS)
    assert all(torch.equal(batch["keys"][k], plain["keys"][k]) for k in ("anchor", "positive", "negative"))


def test_an_instruction_precedes_an_images_placeholder(tiny_backbone):
    from tests.test_qwen3 import picture

    backbone = tiny_backbone("tiny_vl")
    pre = Preprocessor(backbone.processor, Prompter(), source_prompts={"pics": {"instruction": "Caption it: "}})
    prompt = pre.prompts([{"image": picture(0), "prompt": "pics"}])[0]
    assert prompt.startswith(f"{QWEN25}Caption it: <|vision_start|><|image_pad|><|vision_end|>\nSummarize the above")


def test_source_prompts_are_checked_before_anything_loads(tmp_path):
    cfg = compose_train(tmp_path, ["model=tiny_text", "data=scenes", "+preprocess.source_prompts.scenes.sides=[query]",
                                   "+preprocess.source_prompts.scenes.suffixes.smell=x",
                                   "+preprocess.source_prompts.scenes.prefix=y",
                                   "+preprocess.source_prompts.allnli.instruction=z"])
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    for part in ("preprocess.source_prompts.scenes.sides=['query'] must list some of anchor, positive, negatives",
                 "preprocess.source_prompts.scenes.suffixes.smell is not a modality",
                 "preprocess.source_prompts.scenes.prefix is not a key",
                 "preprocess.source_prompts.allnli names no data source; the sources are scenes"):
        assert part in message, message


def test_a_run_records_them_and_encode_serves_them(tmp_path):
    from lco.models.loading import load_embedder

    proc = run_entry("lco.train", tmp_path, "model=tiny_text", "data=scenes", "data.sources.scenes.n=64",
                     "data.val_size=8", "data.batch_size=8", "trainer.max_steps=2", "logger=csv",
                     f"+preprocess.source_prompts.scenes.instruction='{INSTRUCTION}'",
                     env={"WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (adapter,) = tmp_path.glob("logs/train/runs/*/adapter")
    card = json.loads((adapter / "lco_embedding.json").read_text())
    assert card["source_prompts"] == {"scenes": {"instruction": INSTRUCTION, "system": None, "suffixes": {},
                                                 "sides": ["anchor"]}}
    embedder = load_embedder(adapter, dtype="float32")
    texts = ["a small red cube at the left", "a large blue sphere at the top"]
    queries = embedder.encode(texts, prompt_name="scenes")
    by_hand = Embedder.__call__(embedder, embedder.preprocessor.tokenizer(
        [f"{QWEN25}{INSTRUCTION}{t}\nSummarize the above text in one word:{TAIL}" for t in texts],
        add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt").data)
    assert torch.allclose(queries, by_hand.detach(), atol=1e-6)
    assert not torch.allclose(queries, embedder.encode(texts), atol=1e-3)  # documents: no instruction
    with pytest.raises(ConfigError, match="prompt 'nli' is not one of this model's source prompts \\(scenes\\)"):
        embedder.encode(texts, prompt_name="nli")


def test_the_export_documents_them_and_sentence_transformers_reproduces_an_instruction(tmp_path):
    from sentence_transformers import SentenceTransformer

    from lco.export import export
    from lco.models.loading import load_embedder
    from tests.test_export import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "checkpoint", "tiny_text", "lora")
    card_path = checkpoint / "lco_embedding.json"
    card = json.loads(card_path.read_text())
    card["source_prompts"] = {"scenes": {"instruction": INSTRUCTION, "system": None, "suffixes": {},
                                         "sides": ["anchor"]}}
    card_path.write_text(json.dumps(card))
    out = export(checkpoint, tmp_path / "model", verify=False)["out"]
    readme = (tmp_path / "model" / "README.md").read_text()
    assert "### Source prompts" in readme and f"| scenes | `{INSTRUCTION}` |  |  | anchor |" in readme
    texts = ["a small red cube at the left", "a large blue sphere at the top"]
    ours = load_embedder(checkpoint, dtype="float32").encode(texts, prompt_name="scenes")
    st = SentenceTransformer(out).encode([INSTRUCTION + t for t in texts], convert_to_tensor=True)
    assert torch.allclose(st.float().cpu(), ours, atol=1e-5)
