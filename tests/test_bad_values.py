"""Bad values through `python -m lco.train`, as a user types them: exit 2, one `lco: error:` paragraph naming the
key, its value and the valid range, no traceback, and nothing loaded (lco writes the run's config.yaml only once the
model is built; none is there)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    "data.batch_size=0": "data.batch_size=0 is not valid: triplets per device and step must be an integer >= 1",
    "optim.optimizer.lr=nan": "optim.optimizer.lr=nan is not valid: the learning rate must be a finite number > 0",
    "optim.optimizer.lr=-1e-4": "optim.optimizer.lr=-0.0001 is not valid",
    "loss.temperature=0": "loss.temperature=0 is not valid: InfoNCE temperature must be a finite number > 0",
    "method.dropout=1.0": "method.dropout=1.0 is not valid: LoRA dropout must be a finite number >= 0 and < 1",
    "method.r=0": "method.r=0 is not valid: LoRA rank must be an integer >= 1",
    "trainer.max_steps=-5": "trainer.max_steps=-5 is not valid",
    "preprocess.max_text_tokens=0": "preprocess.max_text_tokens=0 is not valid",
    "data.val_size=-1": "data.val_size=-1 is not valid",
    "step.cache_chunk=0": "step.cache_chunk=0 is not valid: GradCache items per chunk",
    "step.cache_tokens=0": "step.cache_tokens=0 is not valid: GradCache tokens per chunk must be an integer >= 1",
    "step.pack=yes": "step.pack='yes' is not valid: use one of auto, True, False.",
    "step.share_prefix=yes": "step.share_prefix='yes' is not valid: use one of True, False.",
    "data.on_error=skipp": "data.on_error='skipp' is not valid: use one of raise, skip. Did you mean skip?",
    "optim.scheduler.name=cosin": "optim.scheduler.name='cosin' is not valid: use one of linear, cosine.",
    # these trained before: a word where a flag belongs, the word "None" after every item, a negative share
    "loss.symmetric=maybe": "loss.symmetric='maybe' is not valid: it must be bool.",
    "preprocess.prompter.suffixes.text=null": "preprocess.prompter.suffixes {'text': None} must be text",
    "data.weights={scenes:-1}": "data.weights {'scenes': -1.0}: each source's share of training steps must be a "
                                "finite number > 0",
    # these failed inside Lightning or torch after the weights loaded
    "model.dtype=float13": "model.dtype='float13' is not valid: use one of auto, float32, bfloat16, float16.",
    "trainer.precision=fp13": "trainer.precision='fp13' is not valid: use one of 32-true, 32, bf16-mixed",
    "trainer.devices=0": "trainer.devices=0 is not valid: use auto, a count >= 1, -1 (all)",
}
SMALL = ["model=tiny_text", "data=scenes", "data.sources.scenes.n=64", "data.val_size=8", "data.batch_size=8",
         "logger=none"]


@pytest.mark.parametrize("override", list(CASES))
def test_a_bad_value_stops_before_anything_loads(tmp_path, override):
    proc = subprocess.run([sys.executable, "-m", "lco.train", f"paths.log_dir={tmp_path / 'logs'}", *SMALL, override],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("lco: error:") == 1
    paragraph = proc.stderr[proc.stderr.index("lco: error:"):].strip()
    assert "\n\n" not in paragraph and CASES[override] in paragraph
    assert "Loading weights" not in proc.stdout + proc.stderr  # transformers' bar: no model was loaded
    assert not list((tmp_path / "logs").glob("train/runs/*/config.yaml"))


def test_every_rule_names_a_key_the_recipe_has(tmp_path):
    """VALUE_RULES keys exist in the composed default config (or in the group option that has them), so a
    renamed key cannot leave its rule checking nothing."""
    from omegaconf import OmegaConf

    from lco.config import VALUE_RULES
    from tests.conftest import compose_train

    cfg = compose_train(tmp_path, ["data.val_batch_size=8", "data.steps_per_epoch=4"])
    missing = [key for key, *_ in VALUE_RULES if OmegaConf.select(cfg, key, default="<none>") in ("<none>", None)]
    assert missing == []


KEY_CASES = {
    # Hydra's own advice after a typo was to append with +: the run then trained at the default learning rate
    "+optim.lrr=1e-3": "optim.lrr is not a key lco reads (added with +, or by an experiment file); the keys under "
                       "optim are: optimizer, scheduler. Did you mean optim.optimizer.lr?",
    "+optim.lr=nan": "optim.lr is not a key lco reads",
    "+lrr=1": "lrr is not a key lco reads",
    # without +, Hydra stopped with that advice; lco answers instead
    "optim.lrr=1e-3": "optim.lrr (command line) is not a key of the config under optim. Did you mean optim.optimizer.lr?",
    "trainer.max_step=2": "trainer.max_step (command line) is not a key of the config under trainer. Did you mean "
                          "trainer.max_steps",
    "model=tiny_txt": "model=tiny_txt (command line) is not an option of the config group model: the options are",
    "+method.rr=8": "method.rr is not an argument of lco.methods.lora.LoRA",
    # keys that moved to the group that reads them: an old command line is told the new path
    "loss.cache_chunk=8": "loss.cache_chunk (command line) is not a key of the config under loss. It is now "
                          "step.cache_chunk (it moved to the config group that reads it).",
    "+loss.cache_chunk=8": "loss.cache_chunk is not an argument of lco.losses.InfoNCE; valid keys: temperature, "
                           "learnable, symmetric, gather, max_scale, mask_duplicates, false_negative_margin, "
                           "matryoshka_dims, matryoshka_weights. It is now step.cache_chunk",
    "fuse_max_padding=2": "It is now step.fuse_max_padding",
    "embed.prompter.system=hi": "It is now preprocess.prompter.system",
    "max_nonfinite_skips=1": "It is now module.max_nonfinite_skips",
}


@pytest.mark.parametrize("override", list(KEY_CASES))
def test_an_unknown_key_or_option_stops_with_lcos_message(tmp_path, override):
    proc = subprocess.run([sys.executable, "-m", "lco.train", f"paths.log_dir={tmp_path / 'logs'}", "model=tiny_text",
                           "logger=none", override], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("lco: error:") == 1
    assert "To append to your config use" not in proc.stderr  # Hydra's advice that led to the silent case
    paragraph = proc.stderr[proc.stderr.index("lco: error:"):].strip()
    assert "\n\n" not in paragraph and KEY_CASES[override] in paragraph
    assert not list((tmp_path / "logs").glob("train/runs/*/config.yaml"))
    assert "Loading weights" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (Path(__file__).parent.parent / "conf/experiment").glob("*.yaml")))
def test_experiment_files_state_only_deltas_of_declared_keys(tmp_path, experiment):
    from lco.config import check_config
    from tests.conftest import compose_train

    check_config(compose_train(tmp_path, [f"experiment={experiment}"]))


def test_a_line_that_is_not_utf8_stops_the_cli_naming_file_and_line(tmp_path):
    data = tmp_path / "latin1.jsonl"
    good = b'{"anchor": "a", "positive": "b", "negative": "c"}'
    data.write_bytes(b"\n".join([good, good.replace(b'"a"', b'"caf\xe9"'), good]) + b"\n")
    proc = subprocess.run([sys.executable, "-m", "lco.train", f"paths.log_dir={tmp_path / 'logs'}", "model=tiny_text",
                           "logger=none", "data=jsonl", f"data.sources.jsonl.path={data}", "data.val_size=0"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"lco: error: {data}, line 2: not UTF-8 (byte 0xe9 at column 16)" in proc.stderr
    assert not list((tmp_path / "logs").glob("train/runs/*/config.yaml"))
