"""Load a backbone (model + processor) by hub id or local folder, failing fast when it cannot be had.

In: ``family`` (see ``families.py``), ``path`` (hub id, local folder, or ``lco-tiny/<name>``), dtype,
``quantization`` (None, or ``"nf4"`` for QLoRA: see ``quantization.py``).
Out: a ``Backbone`` whose ``model`` is the transformers model (Omni: the thinker only) and whose
``processor`` is the checkpoint's processor (a tokenizer for text-only families).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lco.errors import BackboneUnavailable
from lco.hub import hub_reachable
from lco.models.families import Family, get_family
from lco.models.processor import load_processor
from lco.models.quantization import from_pretrained_kwargs
from lco.models.tiny import TINY_PREFIX, materialize
from lco.provenance import model_revision


@dataclass
class Backbone:
    model: torch.nn.Module
    processor: object
    family: Family
    path: str
    source: dict = field(default_factory=dict)  # lco.provenance.model_revision: hub commit, or folder + config hash

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def placeholder_ids(self) -> dict[str, int | None]:
        """Media kind -> the token id that stands for one item of it in ``input_ids`` (None: no such media)."""
        config = self.model.config
        return {kind: getattr(config, f"{kind}_token_id", None) for kind in ("image", "video", "audio")}

    @property
    def position_rows(self) -> int:
        """Rows of ``position_ids`` the model takes: 1, or 4 for multimodal rotary (text positions first)."""
        return 4 if self.family.mrope else 1

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size


def _cached_on_disk(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def looks_local(path: str) -> bool:
    """A path a user means as a folder (absolute, ``./``, ``../``, ``~``), never a hub id (``org/name``)."""
    return Path(path).is_absolute() or path.startswith(("./", "../", "~", ".\\", "..\\")) or path in (".", "..")


def check_local(path: str, config_key: str = "model.path") -> Path | None:
    """The folder ``path`` names, checked (exists, ``config.json``, weights), or None for a hub id. Runs in
    ``lco.train`` before data or weights load; raises ``BackboneUnavailable`` naming ``config_key``."""
    local = Path(path).expanduser()
    if not local.exists():
        if looks_local(path):
            raise BackboneUnavailable(
                f"{config_key}={path!r} looks like a local folder but {local.absolute()} does not exist: fix the "
                f"path, or give a hub id (org/name) in {config_key}.")
        return None
    if not local.is_dir() or not (local / "config.json").exists():
        raise BackboneUnavailable(
            f"{config_key}={path!r} is a local path but has no config.json: point {config_key} at a folder "
            "written by save_pretrained (or a hub snapshot).")
    if not any((local / name).exists() for name in WEIGHTS):
        raise BackboneUnavailable(
            f"{config_key}={path!r} ({local.absolute()}) has config.json but no weights: expected one of "
            f"{', '.join(WEIGHTS)} (as save_pretrained writes). Copy the checkpoint's weight files there, or "
            f"point {config_key} at the folder that has them.")
    return local


def resolve_path(path: str, revision: str | None = None, config_key: str = "model.path") -> tuple[str, dict]:
    """Return (path to load, extra from_pretrained kwargs); raise ``BackboneUnavailable`` without waiting on retries."""
    if path.startswith(TINY_PREFIX):
        return str(materialize(path[len(TINY_PREFIX):])), {}
    local = check_local(path, config_key)
    if local is not None:
        return str(local), {}
    if _cached_on_disk(path, revision):
        return path, {"local_files_only": True, "revision": revision}
    if hub_reachable():
        return path, {"revision": revision}
    raise BackboneUnavailable(
        f"model {path!r} is not in the local Hugging Face cache and the hub cannot be reached (offline or "
        f"HF_HUB_OFFLINE=1). Download it on a connected machine (`hf download {path}`) and copy the cache, or set "
        f"{config_key}=/path/to/local/folder. For an offline run use a tiny twin: model=tiny_omni, tiny_vl or tiny_text."
    )


def load_backbone(family: str, path: str, dtype: str = "auto", attn_implementation: str | None = "sdpa",
                  revision: str | None = None, trust_remote_code: bool = False,
                  quantization: str | None = None) -> Backbone:
    """Load model and processor. ``dtype``: ``auto`` (bf16 on CUDA, else fp32), ``bfloat16``, ``float32``...
    ``quantization``: None or ``"nf4"``; a bad value, or nf4 without CUDA/bitsandbytes, raises ``ConfigError``
    before anything (even a tiny twin) is built."""
    import transformers

    quantized = from_pretrained_kwargs(quantization)
    if trust_remote_code:  # off unless the user sets it: the checkpoint's own Python files would run here
        warnings.warn(f"model.trust_remote_code=true: transformers will import and run Python code shipped with "
                      f"{path!r}. Keep it false (the default) unless you have read that code.", stacklevel=2)
    fam = get_family(family)
    where, hub_kwargs = resolve_path(path, revision)
    hub_kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    config = transformers.AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, **hub_kwargs)
    source = {**model_revision(path, where, config), "revision": revision}
    if fam.config_key and hasattr(config, fam.config_key):  # Omni checkpoints: keep only the thinker
        config = getattr(config, fam.config_key)
    cls = getattr(transformers, fam.model_class)
    model = cls.from_pretrained(where, config=config, dtype=getattr(torch, dtype),
                                attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
                                **hub_kwargs, **quantized)
    processor = load_processor(where, fam.processor_class, fam.feature_extractor_class, **hub_kwargs)
    return Backbone(model=model, processor=processor, family=fam, path=path, source=source)
