"""``python -m lco.bench [parts=[a,...]] [key=value ...]``: run the benchmark parts, write results.md/json."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lco.bench.loop import part_a
from lco.bench.memory import part_c
from lco.bench.packing import part_e
from lco.bench.peers import part_b, part_d
from lco.cli import entry
from lco.config import check_config

PARTS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e}


def run(cfg: DictConfig) -> dict:
    check_config(cfg)
    unknown = [p for p in cfg.parts if p not in PARTS]
    if unknown:
        from lco.errors import ConfigError

        raise ConfigError(f"bench parts={list(cfg.parts)}: unknown part(s) {unknown}; choose from {sorted(PARTS)}.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.platform(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "model": cfg.model.path,
        "config": OmegaConf.to_container(cfg, resolve=True), "parts": {},
    }
    lines = [f"# lco benchmarks ({result['when']}, {result['device']}, {result['machine']}, torch {result['torch']}, "
             f"{result['cpu_threads']} CPU threads)", "",
             f"Model `{cfg.model.path}`; command: `make bench` (`python -m lco.bench`). Every part below was "
             "measured in this one run.", ""]
    for name in cfg.parts:
        part, part_lines = PARTS[name](cfg, device)
        result["parts"][name] = part
        lines += part_lines
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


main = entry("bench", run)


if __name__ == "__main__":
    main()
