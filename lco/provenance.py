"""Where a run's numbers come from: lco's version and commit, the environment, and the base model's revision.

``environment()`` -> ``{"lco": {"version", "commit", "dirty"}, "lock": {"file", "sha256", "matches"},
"python", "packages": {name: version}}``. ``commit``/``dirty`` come from git when lco is installed from a
checkout (``make install`` installs it editable), else null. ``lock.sha256`` is the sha256 of the checkout's
``requirements.lock``; ``matches`` says whether every locked package is installed at its locked version (torch,
which the lock leaves to the Makefile, is listed under ``packages``).

``model_revision(path, where, config)`` -> ``{"path", "revision"}`` plus, for a hub model, ``"commit"`` (the
snapshot's commit hash), or for a local folder (tiny twins included) ``"local_path"`` (absolute) and
``"config_sha256"``.

Run folders get ``provenance.json`` (``lco.train``), adapter and export cards a ``"provenance"`` entry, and W&B runs
the same under ``config.provenance``. ``python -m lco.provenance [--diff-lock requirements.lock]`` prints it, or
the packages whose installed version differs from the lock (what ``make test-latest`` runs against).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
LOCK = CHECKOUT / "requirements.lock"
# the packages whose versions decide lco's numbers; all locked ones are compared when the lock is present
PACKAGES = ("torch", "transformers", "peft", "pytorch-lightning", "hydra-core", "accelerate", "tokenizers",
            "safetensors", "sentence-transformers", "mteb", "wandb", "numpy", "pillow", "torchvision")
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", re.M)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` pin in a compiled requirements lock."""
    return {_canonical(n): v for n, v in _PIN.findall(lock.read_text())}


def lock_differences(lock: Path = LOCK) -> dict[str, tuple[str, str | None]]:
    """``{name: (locked, installed or None)}`` for the pins this environment does not hold."""
    return {n: (v, installed(n)) for n, v in sorted(locked_versions(lock).items()) if installed(n) != v}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """lco, lock, Python and package versions of this process (computed once per process)."""
    in_checkout = (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / ".git").exists()
    commit = _git("rev-parse", "HEAD") if in_checkout else None
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None
    lock = None
    if LOCK.is_file():
        lock = {"file": str(LOCK), "sha256": hashlib.sha256(LOCK.read_bytes()).hexdigest(),
                "matches": not lock_differences(LOCK)}
    return {"lco": {"version": installed("lco"), "commit": commit, "dirty": dirty}, "lock": lock,
            "python": sys.version.split()[0],
            "packages": {n: v for n in PACKAGES if (v := installed(n)) is not None}}


def model_revision(path: str, where: str, config) -> dict:
    """The base model's identity: ``path`` as configured, ``where`` it loaded from, its transformers ``config``."""
    local = Path(where)
    if local.is_dir():
        config_file = local / "config.json"
        digest = hashlib.sha256(config_file.read_bytes()).hexdigest() if config_file.is_file() else None
        return {"path": path, "local_path": str(local.resolve()), "config_sha256": digest}
    # from the hub (or its local cache): transformers records the snapshot's commit on the config it loads
    return {"path": path, "commit": getattr(config, "_commit_hash", None)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lco.provenance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--diff-lock", type=Path, help="list packages whose installed version differs from LOCK")
    args = parser.parse_args(argv)
    if args.diff_lock is None:
        print(json.dumps(environment(), indent=2))
        return 0
    differences = lock_differences(args.diff_lock)
    print(f"lco: {len(differences)} package(s) differ from {args.diff_lock}" + (":" if differences else ""))
    for name, (locked, have) in differences.items():
        print(f"  {name}: {have or 'not installed'} (lock {locked})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
