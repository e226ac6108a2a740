"""Running the nnsight engine on NDIF: the checks before any request, and the remote handle.

NDIF (the National Deep Inference Fabric) hosts large open models (Llama-3.1-70B, 405B) and runs
nnsight traces against them (`remote=True`), so internals no machine here holds can be read. A
remote run names the model by its hub id; this process then holds only its config and tokenizer
(the weights stay on NDIF, the local copy is on the meta device). `check_remote` refuses, with one
line, before anything touches the network: no API key, no hub id, the hub switched off; then NDIF
unreachable.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from introspect_mi.errors import UserError

if TYPE_CHECKING:
    from introspect_mi.models import ModelHandle

KEY_FIX = "get a key at https://login.ndif.us and export NDIF_API_KEY=<key> (or run `python -c 'import nnsight; nnsight.login()'` once)"
CONNECT_TIMEOUT_S = 5.0


def api_key() -> str | None:
    """The NDIF API key nnsight would send: NDIF_API_KEY, else nnsight's config file (no network)."""
    if os.environ.get("NDIF_API_KEY"):
        return os.environ["NDIF_API_KEY"]
    from nnsight import CONFIG

    return CONFIG.API.APIKEY or None


def ndif_host() -> str:
    from nnsight import CONFIG

    return os.environ.get("NDIF_HOST") or CONFIG.API.HOST


def check_api_key() -> None:
    """Refuse a remote run without an NDIF API key (reads the environment and nnsight's config only)."""
    if not api_key():
        raise UserError("no NDIF API key for --remote (NDIF_API_KEY is unset and nnsight's config has none)", KEY_FIX)


def check_remote(model: str, *, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse a remote run that cannot work, in this order: no API key; `model` is not a hub id (an
    embedded name or a local path); HF_HUB_OFFLINE set (the config and tokenizer come from the
    hub); the NDIF host does not accept a TCP connection. Only the last step uses the network."""
    from introspect_mi import embedded

    check_api_key()
    if model in embedded.EMBEDDED or Path(model).expanduser().exists() or model.count("/") != 1:
        raise UserError(f"a remote run names its model by its hub id, not {model!r}",
                        "use the study's model as a hub id (e.g. meta-llama/Llama-3.1-70B-Instruct); local weights run without --remote")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"--remote needs the hub for {model}'s config and tokenizer, but HF_HUB_OFFLINE is set",
                        "run with HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0 on a machine with network")
    url = urlparse(ndif_host())
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=connect_timeout).close()
    except OSError as exc:
        raise UserError(f"NDIF ({ndif_host()}) is unreachable ({exc})", "run --remote on a machine with network, or drop --remote to run locally") from None


def remote_handle(model: str) -> ModelHandle:
    """A `ModelHandle` for a hub model served by NDIF: config and tokenizer here, weights on meta,
    its nnsight view the `LanguageModel` that traces go through."""
    import torch
    from nnsight import LanguageModel

    from introspect_mi.models import ModelHandle, Placement
    from introspect_mi.prompt_format import format_for

    lm = LanguageModel(model)
    handle = ModelHandle(name=model, checkpoint=Path(model), model=lm._module, tokenizer=lm.tokenizer, prompt_format=format_for(lm.tokenizer),
                         placement=Placement("meta", torch.bfloat16, None), attn_implementation="remote", base_fingerprint=f"hub:{model}")
    handle._views["nnsight"] = lm
    return handle
