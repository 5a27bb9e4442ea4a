"""Fail in seconds, not half a minute, when the Hugging Face Hub cannot be reached.

When a file is not in the local cache and its first request fails with a network error, huggingface_hub retries it
with exponential backoff (five more tries, about 30 s in all) before giving up: right for a Hub that hiccups, a long
wait when nothing answers at all (no network, a wrong HF_ENDPOINT). So before a Hub call, one TCP connection to the
endpoint (or to the proxy that reaches it) is tried, with a short timeout; when none can be made, the call runs in
huggingface_hub's offline mode: the local cache still serves what it holds, and what it lacks fails at once, with
the same error as after the retries. A Hub that accepts the connection keeps every retry.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator

#: how long a connection to the Hub (or the proxy in front of it) may take before it counts as unreachable
CONNECT_TIMEOUT_S = 3.0


def _address(endpoint: str) -> tuple[str, int]:
    """(host, port) a request to `endpoint` connects to first: the proxy for its scheme when one applies."""
    url = urllib.parse.urlsplit(endpoint)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(endpoint: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """True when a TCP connection to the Hub endpoint (huggingface_hub's, by default) can be opened."""
    from huggingface_hub import constants

    try:
        socket.create_connection(_address(endpoint or constants.ENDPOINT), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def cache_only_when_hub_unreachable() -> Iterator[None]:
    """Inside, Hub calls go to the local cache only when the Hub cannot be reached (and as usual otherwise)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False
