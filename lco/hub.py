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
