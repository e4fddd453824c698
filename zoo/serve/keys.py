"""TorchServe's key file, and the one request helper that sends a key to a server zoo started."""
from __future__ import annotations

import json
import time
from pathlib import Path

from zoo.errors import ZooError

KEY_FILE = "key_file.json"


def read_key(key_file: Path | str, kind: str = "inference", settle_s: float = 2.0) -> str:
    """A key from TorchServe's key_file.json: "inference", "management" or "API".
    TorchServe writes the file in place, at start and when a key is renewed, so a reader can catch it
    empty or half-written: an unparseable file is read again for up to settle_s before it is refused."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            keys = json.loads(Path(key_file).read_text())
            break
        except FileNotFoundError:
            raise ZooError(f"{key_file} does not exist: is the server running? "
                           "Start it with `zoo serve start`.") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            if time.monotonic() > deadline:
                raise ZooError(f"{key_file} is not TorchServe's key file: give the key file `zoo serve start` "
                               f"printed.") from None
            time.sleep(0.05)
    if not isinstance(keys, dict):
        keys = {}
    entry = keys.get(kind) or keys.get(kind.lower()) or {}
    key = entry.get("key") if isinstance(entry, dict) else None
    if not key:
        raise ZooError(f"{key_file} holds no {kind} key: restart the server with `zoo serve start`.")
    return key


def request(url: str, method: str = "GET", key: str | None = None, body: bytes | None = None,
            timeout: float = 10.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers. No proxy, no retries."""
    import requests

    headers = dict(headers or {})
    if body is not None:
        # Without it TorchServe may parse a body as form fields: say it is bytes.
        headers.setdefault("Content-Type", "application/octet-stream")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    with requests.Session() as session:
        session.trust_env = False  # a proxy from the environment must not see traffic to our own server
        try:
            response = session.request(method, url, data=body, headers=headers, timeout=timeout)
        except requests.RequestException:
            return 0, b""
        return response.status_code, response.content
