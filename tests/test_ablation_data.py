"""experiments/ablation_data/run.sh end to end in miniature: two runs, their soup, its export, all on the twins."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
SMALL = "trainer=cpu logger=none model=tiny_vl trainer.max_steps=2 validate_before=false data.val_size=0 data.batch_size=4"


def test_ablation_data_script_trains_soups_and_exports(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PY": sys.executable, "ROOT": str(tmp_path),
           "TEXT_ARGS": "data=scenes data.sources.scenes.n=16", "EXTRA": SMALL + f" paths.log_dir={tmp_path}/logs",
           "MM_ARGS": "data=scenes_mm data.sources.scenes.n=16 data.sources.scene_images.n=16"}
    proc = subprocess.run(["bash", str(ROOT / "experiments/ablation_data/run.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text, mm = (load_file(str(tmp_path / run / "adapter/adapter_model.safetensors")) for run in ("text_only", "text_mm"))
    assert text.keys() == mm.keys() and any(not torch.equal(text[k], mm[k]) for k in text)  # two different adapters
    soup = json.loads((tmp_path / "soup/adapter/lco_embedding.json").read_text())["soup"]
    assert soup["weights"] == [0.5, 0.5] and [Path(p).parent.name for p in soup["inputs"]] == ["text_only", "text_mm"]
    exported = json.loads((tmp_path / "soup/export/lco_embedding.json").read_text())
    assert exported["exported"]["method"] == "lora" and (tmp_path / "soup/export/modules.json").is_file()
    # provenance travels: each run's card, the soup's (its own and its inputs'), the export's (its own + the soup's)
    cards = [json.loads((tmp_path / run / "adapter/lco_embedding.json").read_text()) for run in ("text_only", "text_mm")]
    souped = json.loads((tmp_path / "soup/adapter/lco_embedding.json").read_text())["provenance"]
    assert souped["ingredients"] == [c["provenance"] for c in cards]
    assert souped["base_model"] == cards[0]["provenance"]["base_model"]
    assert souped["base_model"]["path"] == "lco-tiny/tiny_vl" and souped["base_model"]["config_sha256"]
    assert exported["provenance"] == souped and exported["exported"]["provenance"]["lco"] == souped["lco"]
