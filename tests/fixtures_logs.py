"""Fixtures for the outcome-log and download tests: data paths, small logs, a loopback HTTP server.

Test modules import what they use (``from tests.fixtures_logs import ...``);
pytest picks up imported fixtures.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    # A missing data folder must fail the real-data tests, not skip them silently.
    assert (path / "outcomes").is_dir(), f"shared data not found at {path}; set THRIFTY_DATA_DIR"
    assert (path / "raw" / "routerbench").is_dir(), f"raw RouterBench samples not found under {path}"
    return path


def small_log() -> pd.DataFrame:
    """Six outcomes of three prompts by two models, only the required columns plus a response."""
    return pd.DataFrame(
        {
            "prompt_id": ["p1", "p1", "p2", "p2", "p3", "p3"],
            "prompt": ["What is 2+2?", "What is 2+2?", "Name a prime.", "Name a prime.", "Say hi.", "Say hi."],
            "model": ["cheap", "big", "cheap", "big", "cheap", "big"],
            "success": [1.0, 1.0, 0.0, 1.0, 1.0, 1.0],
            "response": ["4", "The answer is 4.", None, "7 is prime.", "hi", "Hello there!"],
        }
    )


def write_log(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` in the format its suffix names (.parquet, .jsonl/.ndjson, .csv, .pkl)."""
    suffix = path.suffix
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix in (".pkl", ".pickle"):
        frame.to_pickle(path)
    else:
        raise ValueError(suffix)
    return path


# --------------------------------------------------------------------------- loopback HTTP server


@dataclass
class FileServer:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1 with Range support.

    ``drop_after``: URL path -> byte count; the first GET of that path sends
    the full headers, then only that many body bytes, and closes the
    connection (a dropped download). ``ignore_range``: answer 200 with the
    whole file even when a Range is asked for.
    """

    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)
    ignore_range: bool = False
    requests: list[dict] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path


def _handler_for(server: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            server.requests.append(
                {"path": self.path, "range": self.headers.get("Range"), "authorization": self.headers.get("Authorization")}
            )
            body = server.files.get(self.path)
            if body is None:
                self._reply(404, b"not found")
                return
            start = self._range_start()
            if start is not None and not server.ignore_range:
                if start >= len(body):
                    self._reply(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                    return
                content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
                self._send(206, body[start:], {"Content-Range": content_range})
            else:
                self._send(200, body, {})

        def _range_start(self) -> int | None:
            value = self.headers.get("Range")
            if not value or not value.startswith("bytes=") or not value.endswith("-"):
                return None
            return int(value[len("bytes="):-1])

        def _reply(self, status: int, body: bytes, headers: dict | None = None):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send(self, status: int, body: bytes, headers: dict):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = server.drop_after.pop(self.path, None)  # only the first GET is cut short
            if cut is None:
                self.wfile.write(body)
                return
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


@pytest.fixture
def file_server():
    """A loopback HTTP server for one test; stopped afterwards."""
    state = FileServer(base_url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
