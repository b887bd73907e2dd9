"""Is a Hugging Face Hub reachable? Asked once, before anything waits on the network.

``huggingface_hub`` and ``transformers`` retry an unreachable hub for tens of seconds before they
fail. msakit asks first, in this order, and says at once why a hub name cannot be used:

1. the local Hugging Face cache (a name downloaded before works offline);
2. offline mode (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``);
3. one TCP connection to the hub's host (``HF_ENDPOINT``, default huggingface.co), with a short
   timeout (``MSAKIT_HUB_TIMEOUT`` seconds, default 3); the answer is kept for the process.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

#: Seconds to wait for the hub's host to accept a connection.
DEFAULT_TIMEOUT_S = 3.0

_reachable: dict[str, str | None] = {}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def endpoint() -> str:
    """The hub's base URL (``HF_ENDPOINT``, else huggingface_hub's default)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return constants.ENDPOINT


def offline_reason() -> str | None:
    """Why no hub can be asked now (``None``: one answered).

    The reason is a phrase such as ``"HF_HUB_OFFLINE=1 is set"`` or ``"huggingface.co:443 did
    not answer within 3 s (no network?)"``.
    """
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _truthy(os.environ.get(variable)):
            return f"{variable}={os.environ[variable]} is set (offline mode)"
    url = endpoint()
    if url not in _reachable:
        _reachable[url] = _connect_error(url)
    return _reachable[url]


def _connect_error(url: str) -> str | None:
    parts = urlsplit(url)
    host = parts.hostname or url
    port = parts.port or (80 if parts.scheme == "http" else 443)
    timeout = float(os.environ.get("MSAKIT_HUB_TIMEOUT", DEFAULT_TIMEOUT_S))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        detail = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        return f"the model hub {host}:{port} is unreachable ({detail}; no network?)"


def cached_file(repo_id: str, filename: str) -> str | None:
    """The local cache's copy of ``filename`` of the model repository ``repo_id``, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repository id
        return None
    return found if isinstance(found, str) else None


def looks_like_repo_id(name: str) -> bool:
    """``owner/name`` or ``name`` as the hub spells it, not a filesystem path."""
    if not name or name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        return False
    return all(part and all(c.isalnum() or c in "-_." for c in part) for part in name.split("/"))
