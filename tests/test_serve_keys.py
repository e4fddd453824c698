"""Reading TorchServe's key file, which it writes in place: a reader can catch it empty or half-written
(`make demo` once failed so, right after the server started), and the request helper that sends the key.
No TorchServe needed."""
from __future__ import annotations

import json
import threading
import time

import pytest

from zoo import serve
from zoo.errors import ZooError

KEYS = {"management": {"key": "m-key", "expiration time": "never"},
        "inference": {"key": "i-key", "expiration time": "2026-11-29T12:00:00Z"},
        "API": {"key": "a-key"}}


def test_a_half_written_key_file_is_read_once_it_is_complete(tmp_path):
    key_file = tmp_path / "key_file.json"
    text = json.dumps(KEYS)
    key_file.write_text(text[: len(text) // 2])  # what a reader sees while TorchServe writes

    def finish():
        time.sleep(0.3)
        key_file.write_text(text)

    writer = threading.Thread(target=finish)
    writer.start()
    try:
        assert serve.read_key(key_file, "inference") == "i-key"
    finally:
        writer.join()
    assert serve.read_key(key_file, "API") == "a-key"


@pytest.mark.parametrize("content, words", [
    ("", "is not TorchServe's key file"),
    ('{"inference": ', "is not TorchServe's key file"),
    ("[1, 2]", "holds no inference key"),
    ('{"management": {"key": "m"}}', "holds no inference key"),
])
def test_a_key_file_that_never_completes_is_refused_in_one_sentence(tmp_path, content, words):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(content)
    with pytest.raises(ZooError, match=words):
        serve.read_key(key_file, "inference", settle_s=0.2)


def test_a_missing_key_file_says_how_to_start_the_server(tmp_path):
    with pytest.raises(ZooError, match="does not exist: is the server running"):
        serve.read_key(tmp_path / "key_file.json")


def test_a_request_nobody_answers_gets_status_0():
    from zoo.serve.keys import request

    port = serve.free_port_block(24000, count=1, step=97)
    assert request(f"http://127.0.0.1:{port}/ping", "POST", key="k", body=b"x", timeout=2) == (0, b"")


def test_a_request_sends_the_key_and_the_body_as_bytes(monkeypatch):
    import http.server

    from zoo.serve.keys import request

    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # the name http.server calls
            seen.update(self.headers)
            seen["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy must not see local traffic
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    try:
        status = request(f"http://127.0.0.1:{server.server_port}/predictions/m", "POST", key="k", body=b"\x89PNG")
    finally:
        thread.join(10)
        server.server_close()
    assert status == (201, b"ok")
    assert seen["Authorization"] == "Bearer k" and seen["Content-Type"] == "application/octet-stream"
    assert seen["body"] == b"\x89PNG"
