"""Client side of `zoo serve`: send images to a served model, whichever engine serves it.

The URL says the protocol: http://HOST:PORT/predictions/NAME is TorchServe's (zoo's KServe engine
answers it too): the image's bytes as the body. http://HOST:PORT/v2/models/NAME is the Open Inference
Protocol (zoo's KServe engine, or any v2 server running a zoo export): one BYTES tensor in the binary
tensor data extension (zoo/serve/v2.py). A path before /predictions or /v2 (an ingress prefix) is kept.

The token comes from --token, or from the key file of the TorchServe `zoo serve start` runs on that
port; the KServe engine has none (an ingress in front may ask for --token). TorchServe's inference key
expires (60 minutes by default); when the server refuses it, a fresh one is asked for with the key
file's API key and the request is sent once more.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from zoo.errors import UsageError, ZooError
from zoo.serve.config import KSERVE, TORCHSERVE, state_dir_for
from zoo.serve.keys import KEY_FILE, read_key
from zoo.serve.state import load_state

TOKEN_REFUSED = ("InvalidKeyException", "Token Authorization failed")
VARIANT_HEADER = "X-Zoo-Variant"  # the handler names the variant (fp32, int8, fp16) that answered
OOD_KEY = "ood"  # the classifier answer's last key: {"score", "threshold", "out_of_distribution"}


def split_ood(answer: dict) -> tuple[dict[str, float], dict | None]:
    """(top-k {label: probability}, the ood field or None) from one image's classifier answer.

    The field is told from a label by its value, an object (or null): a class named "ood" (whose
    exports carry no OOD field) keeps its probability.
    """
    if not isinstance(answer, dict):
        raise ValueError(f"The server's answer is not a {{label: probability}} object: {str(answer)[:120]}")
    ood = answer.get(OOD_KEY)
    if ood is None or isinstance(ood, dict):
        return {k: v for k, v in answer.items() if k != OOD_KEY}, ood
    return dict(answer), None


@dataclass(frozen=True)
class Endpoint:
    base: str  # scheme, host, port and any path prefix
    model: str
    protocol: str  # TORCHSERVE (/predictions/NAME) or KSERVE (/v2/models/NAME, the Open Inference Protocol)

    @property
    def url(self) -> str:
        """Where the images go."""
        if self.protocol == KSERVE:
            return f"{self.base}/v2/models/{self.model}/infer"
        return f"{self.base}/predictions/{self.model}"


def parse_endpoint(url: str) -> Endpoint:
    """The endpoint http://HOST:PORT[/PREFIX]/predictions/NAME or .../v2/models/NAME[/infer] names."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/").split("/")
    if path[-1:] == ["infer"] and path[-4:-2] == ["v2", "models"]:
        path = path[:-1]
    if parts.scheme in ("http", "https") and parts.hostname and len(path) >= 3 and path[-1]:
        prefix = f"{parts.scheme}://{parts.netloc}"
        if path[-2] == "predictions":
            return Endpoint(prefix + "/".join(path[:-2]), path[-1], TORCHSERVE)
        if path[-3:-1] == ["v2", "models"]:
            return Endpoint(prefix + "/".join(path[:-3]), path[-1], KSERVE)
    raise UsageError(f"{url} is not a prediction endpoint: give http://HOST:PORT/predictions/MODEL_NAME (TorchServe) "
                     "or http://HOST:PORT/v2/models/MODEL_NAME (KServe, the Open Inference Protocol).")


def split_endpoint(url: str) -> tuple[str, str]:
    """(base URL, model name) from http://HOST:PORT/predictions/NAME or http://HOST:PORT/v2/models/NAME."""
    endpoint = parse_endpoint(url)
    return endpoint.base, endpoint.model


class ServeClient:
    """One model on one server: `classify` and `features` send one image's bytes each."""

    def __init__(self, url: str, token: str | None = None, key_file: Path | None = None, timeout_s: float = 120.0):
        import requests

        self.endpoint = parse_endpoint(url)
        self.base, self.model = self.endpoint.base, self.endpoint.model
        port = urlsplit(self.base).port or 80
        self.state_dir = state_dir_for(port)
        self.key_file = None if token else Path(key_file) if key_file else self.state_dir / KEY_FILE
        self.token = token
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.variant: str | None = None  # what the last answer said ran; None from a server that does not say
        self.ood: dict | None = None  # the last classification's ood field; None from an archive without one
        if urlsplit(self.base).hostname in ("127.0.0.1", "localhost", "::1"):
            self.session.trust_env = False  # a proxy from the environment must not see local traffic

    def _token(self) -> str | None:
        if self.token:
            return self.token
        if self.key_file and self.key_file.is_file():
            return read_key(self.key_file, "inference")
        return None  # a server started with token authorization off

    def _refresh_token(self) -> bool:
        """Ask the server for a new inference key (written into its key file); False if we cannot."""
        if not (self.key_file and self.key_file.is_file()):
            return False
        management = self._management_url()
        try:
            r = self.session.get(f"{management}/token", params={"type": "inference"},
                                 headers={"Authorization": f"Bearer {read_key(self.key_file, 'API')}"}, timeout=10)
        except OSError:
            return False
        return r.status_code == 200

    def _management_url(self) -> str:
        """From the server's record when zoo started it here; else the port after the inference port."""
        info = load_state(self.state_dir)
        if info:
            return info.management_url
        parts = urlsplit(self.base)
        return f"{parts.scheme}://{parts.hostname}:{(parts.port or 80) + 1}"

    def _request(self, image: bytes, topk: int | None) -> tuple[bytes, dict[str, str]]:
        """(body, headers) of one image's request in the endpoint's protocol, without the token."""
        if self.endpoint.protocol == KSERVE:
            from zoo.serve.v2 import encode_images

            return encode_images([image], topk)
        return image, {"Content-Type": "application/octet-stream", **({"X-Topk": str(topk)} if topk else {})}

    def post(self, image: bytes, topk: int | None = None):
        """The server's answer for one image: (status code, parsed JSON body or text). A 200 from a v2 server is
        turned into what TorchServe answers: {label: probability}, or the features vector."""
        import requests

        body, headers = self._request(image, topk)
        for attempt in range(2):
            token = self._token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                r = self.session.post(self.endpoint.url, data=body, headers=headers, timeout=self.timeout_s)
            except requests.ConnectionError:
                raise ZooError(f"No server answers at {self.base}: start one with `zoo serve start`.") from None
            except requests.Timeout:
                raise ZooError(f"{self.base} did not answer within {self.timeout_s:.0f} s: "
                               "check `zoo serve status`.") from None
            if attempt == 0 and any(t in r.text for t in TOKEN_REFUSED) and not self.token and self._refresh_token():
                continue
            break
        self.variant = r.headers.get(VARIANT_HEADER)
        try:
            answer = r.json()
        except ValueError:
            return r.status_code, r.text
        if r.status_code == 200 and self.endpoint.protocol == KSERVE:
            from zoo.serve.v2 import read_answers

            try:
                return 200, read_answers(answer)[0]
            except (ValueError, KeyError, TypeError, IndexError):
                raise ZooError(f"{self.endpoint.url} answered without zoo's outputs (labels and probabilities, or "
                               "features): is it serving a zoo export?") from None
        return r.status_code, answer

    def _answer(self, image: bytes, topk: int | None):
        """The 200 answer, or (for a refused image) the server's one-sentence reason as a ValueError."""
        code, body = self.post(image, topk)
        message = None
        if isinstance(body, dict) and code != 200:  # TorchServe's {"code", "message"}, or the v2 {"error"}
            message = body.get("message") if "code" in body else body.get("error")
        if code == 200:
            return body
        if any(t in str(body) for t in TOKEN_REFUSED):
            where = "--token" if self.token else str(self.key_file)
            raise ZooError(f"The server refused the token from {where}: give the inference key with --token "
                           f"or restart the server with `zoo serve start`.")
        if code == 404:
            raise ZooError(f"{self.base} serves no model {self.model!r}: see `zoo serve status` for the names.")
        if 400 <= code < 500 and message:
            raise ValueError(message)
        raise ZooError(f"{self.base} answered HTTP {code} ({message or str(body)[:200]}): see the server's logs.")

    def classify(self, image: bytes, topk: int | None = None) -> dict[str, float]:
        """The top-k {label: probability}; the answer's ood field goes to `self.ood`."""
        self.ood = None
        top, self.ood = split_ood(self._answer(image, topk))
        return top

    def features(self, image: bytes) -> list[float]:
        return self._answer(image, None)


def predict_remote(server: str, paths: list[Path], top_k: int = 3, token: str | None = None) -> list[dict]:
    """Per-image {path, top_k, error, variant, ood} from a served classifier, like zoo.predict.predict_local."""
    client = ServeClient(server, token=token)
    rows: list[dict] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            rows.append({"path": str(path), "top_k": {}, "error": f"cannot read the file ({e.strerror or e})",
                         "variant": None, "ood": None})
            continue
        try:
            top = client.classify(data, top_k)
            rows.append({"path": str(path), "top_k": top, "error": None, "variant": client.variant, "ood": client.ood})
        except ValueError as e:  # the server refused this image; the others still go
            rows.append({"path": str(path), "top_k": {}, "error": str(e), "variant": client.variant, "ood": None})
    return rows
