"""The TorchServe engine's public inference address: a small HTTP front door in front of TorchServe's own.

TorchServe's Java frontend answers two kinds of request before any handler sees them, and a handler
cannot change those answers: a body labelled application/x-www-form-urlencoded that is not a form (an
image sent with `curl -d`) gets a 500 whose message quotes the body, and a body over the size limit
gets a 413 with an empty body. The front door listens on the public inference port and

- refuses a body over the limit with a 413 and a message, before reading it;
- sends a urlencoded body to the inference APIs as the octet stream it is (the image), as the KServe
  engine reads it;
- passes everything else through untouched, the token and every answer included.

TorchServe itself listens on 127.0.0.1 only, on a port of its own (ServeConfig.ports["torchserve"]).
aiohttp does the HTTP on both sides; the forwarding is written here because zoo starts it itself, with
Python alone, where an nginx or envoy would be one more thing to install.

    python -m zoo.serve.front_door --listen HOST:PORT --upstream http://127.0.0.1:PORT --state-dir DIR
"""
from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict

from zoo.serve.state import FRONT_DOOR as MODULE  # what `is_front_door` looks for in a pid's command line

# Per-connection headers, and the ones aiohttp sets itself on each side.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length", "expect"})
# TorchServe decodes urlencoded bodies as forms on its inference APIs (and refuses the rest with a 500).
INFERENCE_PATHS = ("/predictions/", "/explanations/", "/v1/models/", "/v2/models/")
URLENCODED = "application/x-www-form-urlencoded"

UPSTREAM = web.AppKey("upstream", str)
LIMIT = web.AppKey("limit", int)
SESSION = web.AppKey("session", ClientSession)
log = logging.getLogger(MODULE)


def refusal(status: int, kind: str, message: str) -> web.Response:
    """TorchServe's own error shape, so that clients read one kind of answer."""
    return web.json_response({"code": status, "type": kind, "message": message}, status=status)


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body; None as soon as it is known to pass `limit` bytes (declared or counted)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def upstream_headers(request: web.Request) -> CIMultiDict[str]:
    """The client's headers minus the per-connection ones; a urlencoded body to an inference API relabelled."""
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
    content_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type == URLENCODED and request.path.startswith(INFERENCE_PATHS):
        headers["Content-Type"] = "application/octet-stream"
    return headers


async def forward(request: web.Request) -> web.StreamResponse:
    limit = request.app[LIMIT]
    body = await read_body(request, limit)
    if body is None:
        return refusal(413, "RequestEntityTooLarge",
                       f"The body is larger than the limit of {limit / 2**20:.0f} MB: send fewer or smaller images per "
                       "request.")
    url = request.app[UPSTREAM] + request.rel_url.raw_path_qs
    try:
        async with request.app[SESSION].request(request.method, url, headers=upstream_headers(request), data=body,
                                                allow_redirects=False) as answer:
            payload = await answer.read()
            headers = CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP)
            return web.Response(status=answer.status, body=payload, headers=headers)
    except (ClientError, asyncio.TimeoutError) as e:  # refused, reset, cut short or too slow
        log.warning("TorchServe did not answer %s %s: %r", request.method, request.path, e)
        return refusal(503, "ServiceUnavailable", "TorchServe did not answer this request: try again, and if it "
                                                  "persists see `zoo serve status` and the server's logs.")


def make_app(upstream: str, limit: int, timeout_s: float) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[LIMIT] = limit

    async def session(app: web.Application):  # one pool of kept-alive connections to TorchServe
        app[SESSION] = ClientSession(connector=TCPConnector(limit=256), timeout=ClientTimeout(total=timeout_s),
                                     auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT, the public inference address")
    ap.add_argument("--upstream", required=True, help="TorchServe's inference address, http://127.0.0.1:PORT")
    ap.add_argument("--max-bytes", type=int, required=True, help="the largest body passed on")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds TorchServe may take to answer")
    ap.add_argument("--state-dir", required=True, help="the server's state folder (identifies this process)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen.rsplit(":", 1)
    web.run_app(make_app(args.upstream, args.max_bytes, args.timeout), host=host, port=int(port), access_log=None,
                print=None)


if __name__ == "__main__":
    main()
