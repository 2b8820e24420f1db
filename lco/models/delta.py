"""A trained model stored compactly: every tensor whole, except the huge token tables, of which only the rows
that training changed are kept. Small enough to ship inside lco.

The toy world's pretrained thinker touches ~150 of the 151,936 rows of its token embedding and LM head (the
others keep their seeded init exactly: no weight decay, no gradient), so the file is a few MB instead of 170.
Unchanged rows belong to tokens the toy world never uses; on unpacking they come from the base folder's init.

- ``pack(model_dir, base_dir, out_file)``: writes a safetensors file holding each tensor of ``model_dir``, as
  ``<name>`` or, for a 2-D tensor with fewer than half its rows changed from ``base_dir``, as ``<name>@rows``
  (int64 indices) and ``<name>@values``; the metadata records the SHA-256 of what is stored, and the full shape of
  each row-packed table.
- ``unpack(delta_file, base_dir, out_dir)``: base folder with these tensors written in -> an HF folder. A corrupt
  file, or a base of another architecture (tensor names, full shapes, dtypes), fails with a message. The base's
  untouched rows are deliberately not hashed: they only need to exist, so a transformers release with another
  init order still rebuilds the same toy-world model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"


def state_hash(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(state[name].shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def pack(model_dir: str | Path, base_dir: str | Path, out_file: str | Path) -> dict[str, int]:
    """Returns ``{"tensors": whole tensors stored, "row_tensors": tensors stored by rows, "bytes": file size}``."""
    trained, base = load_file(str(Path(model_dir) / WEIGHTS)), load_file(str(Path(base_dir) / WEIGHTS))
    if set(trained) != set(base):
        raise ValueError(f"{model_dir} and {base_dir} hold different tensor names: not the same architecture")
    delta, row_tensors, tables = {}, 0, {}
    for name, tensor in trained.items():
        if tensor.dim() == 2 and tensor.shape == base[name].shape:
            rows = (tensor != base[name]).any(dim=1).nonzero().flatten()
            if len(rows) < tensor.shape[0] // 2:
                delta[f"{name}@rows"], delta[f"{name}@values"] = rows, tensor[rows].contiguous()
                tables[name] = list(tensor.shape)
                row_tensors += 1
                continue
        delta[name] = tensor.contiguous()
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    save_file(delta, str(out_file), metadata={"sha256": state_hash(delta), "format": "lco-delta-1",
                                              "row_tables": json.dumps(tables)})
    return {"tensors": len(delta) - 2 * row_tensors, "row_tensors": row_tensors, "bytes": Path(out_file).stat().st_size}


def unpack(delta_file: str | Path, base_dir: str | Path, out_dir: str | Path) -> Path:
    """Writes ``out_dir`` (every file of ``base_dir``, weights replaced) and returns it."""
    with safe_open(str(delta_file), framework="pt") as handle:
        metadata = handle.metadata() or {}
    expected, tables = metadata.get("sha256"), json.loads(metadata.get("row_tables", "{}"))
    delta, state = load_file(str(delta_file)), load_file(str(Path(base_dir) / WEIGHTS))
    if state_hash(delta) != expected:
        raise ValueError(f"{delta_file} is corrupt (its SHA-256 does not match the one recorded when it was "
                         "packed); reinstall lco or rebuild the model with `python -m lco.pretrain`.")
    names = {key.partition("@")[0] for key in delta}
    if names != set(state):
        raise ValueError(f"{delta_file} does not fit the base model {base_dir}: {len(names ^ set(state))} tensor "
                         "names differ (wrong base architecture).")
    for key, tensor in delta.items():
        name, _, part = key.partition("@")
        target = state.get(name)
        values = delta[f"{name}@values"] if part else tensor
        shape = tuple(tables.get(name, ())) if part else tuple(tensor.shape)
        if target is None or tuple(target.shape) != shape or target.dtype != values.dtype:
            raise ValueError(f"{delta_file}: tensor {name!r} {shape} {values.dtype} does not fit the base model "
                             f"{base_dir} ({None if target is None else (tuple(target.shape), target.dtype)}): "
                             "wrong base architecture or dtype.")
        if part == "rows":
            target[tensor] = delta[f"{name}@values"]
        elif not part:
            state[name] = tensor
    out = Path(out_dir)
    shutil.copytree(base_dir, out, dirs_exist_ok=True)
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    return out
