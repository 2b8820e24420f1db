"""Can the Hugging Face hub be reached? Answered in milliseconds, so offline runs fail fast instead of retrying."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_offline_flag() -> bool:
    return any(os.environ.get(v, "0") not in ("0", "", "false", "False") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or no TCP connection to the endpoint opens within ``timeout`` s."""
    if hub_offline_flag():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_push(repo: str, key: str = "push_to_hub") -> None:
    """Fail before any work when ``repo`` cannot be pushed to: not a hub repo id (``org/name``), the hub out of reach
    (offline flag or no connection), or no token. Raises ``HubUnavailable`` (``ConfigError`` for a bad id)."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from lco.errors import ConfigError, HubUnavailable

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise ConfigError(f"{key}={repo!r} is not a hub repo id ({err}); give one like your-org/lco-omni-3b.") from None
    upload = f"Export without {key}, then upload the folder from a connected machine: `hf upload {repo} <out>`."
    if not hub_reachable():
        raise HubUnavailable(f"{key}={repo}: the Hugging Face hub cannot be reached (HF_HUB_OFFLINE is set or no "
                             f"connection to it opened); nothing was exported or uploaded. {upload}")
    if get_token() is None:
        raise HubUnavailable(f"{key}={repo}: no Hugging Face token (run `hf auth login` or set HF_TOKEN); nothing was "
                             f"exported or uploaded. {upload}")


def push_folder(folder, repo: str, private: bool, message: str) -> str:
    """Create ``repo`` (a model repo, ``private`` if new) and upload ``folder`` to it in one commit; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", commit_message=message)
    return f"{api.endpoint}/{repo}"
