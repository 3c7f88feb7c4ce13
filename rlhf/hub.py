"""Model paths: a local folder always works; a Hugging Face hub id works when the hub is reachable.

A hub id is downloaded once into the Hugging Face cache (weights as safetensors, configs, tokenizer and chat
template files only: no pickles, no code) and its local snapshot folder is used from then on. When the hub cannot be
used the error is one line naming the params key, within seconds: offline mode (``HF_HUB_OFFLINE=1``, which the
`rlhf` CLI sets unless you set it yourself) answers at once, and otherwise a 3-second connection probe runs before
``huggingface_hub`` would spend ~48 s on retries (STACK-NOTES).
"""
from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
ALLOW = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*", "*.tiktoken"]


class HubError(FileNotFoundError):
    """A model path that is neither a local folder nor a usable hub id (one line naming the key)."""


OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 3.0


def offline_var(names: tuple[str, ...] = OFFLINE_VARS) -> str | None:
    """The variable that puts the hub offline, as huggingface_hub and datasets read it, or None."""
    for var in names:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


def hub_reachable() -> bool:
    """One TCP connection to the hub's endpoint within ``PROBE_TIMEOUT_S`` (a thread, since a DNS lookup ignores
    socket timeouts), so that no network fails in seconds rather than after the hub client's retries. With a proxy
    set the probe cannot tell, and the download itself decides."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    answer: list[bool] = []

    def probe() -> None:
        try:
            port = url.port or (80 if url.scheme == "http" else 443)
            socket.create_connection((url.hostname or "huggingface.co", port), PROBE_TIMEOUT_S).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="rlhf-hub-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    return bool(answer and answer[0])


def resolve_model_path(path: str, key: str) -> str:
    """``path`` when it is a local folder; for a hub id, its downloaded snapshot folder; else HubError."""
    if Path(path).is_dir():
        return path
    if not HUB_ID.match(path) or Path(path).suffix in (".json", ".safetensors"):
        raise HubError(f"{key}: {path} is not a local model folder")
    hint = (f"download it where the hub is reachable (huggingface-cli download {path} --local-dir models/"
            f"{path.split('/')[-1]}) and set {key} to that folder")
    if offline_var(("HF_HUB_OFFLINE",)):
        raise HubError(f"{key}: {path} is not a local folder and the Hugging Face hub is offline (HF_HUB_OFFLINE=1; "
                       f"set HF_HUB_OFFLINE=0 to allow downloads); {hint}")
    if not hub_reachable():
        raise HubError(f"{key}: {path} is not a local folder and the Hugging Face hub is unreachable; {hint}")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(path, allow_patterns=ALLOW)
    except Exception as e:  # noqa: BLE001 - the hub's errors vary (not found, gated, network): one line
        raise HubError(f"{key}: cannot download {path} from the hub: {type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]}") from None
