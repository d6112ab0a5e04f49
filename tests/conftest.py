"""Shared fixtures: a local HTTP server on 127.0.0.1 (never the network) and scale switching."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

# Unit tests use tiny tensors: one thread per pytest-xdist worker avoids oversubscribing the cores.
torch.set_num_threads(1)


@pytest.fixture
def http_server():
    """Serve ``routes[path] = (status, bytes)`` (or a callable returning one) on 127.0.0.1.

    Yields ``(base_url, routes)``.
    """
    routes: dict[str, tuple[int, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            route = routes.get(self.path, (404, b"not found"))
            status, body = route() if callable(route) else route
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cpu_scale(monkeypatch):
    """Run a test as if at cpu scale (real loaders instead of smoke stand-ins)."""
    monkeypatch.setenv("DLH_SCALE", "cpu")


@pytest.fixture
def smoke_scale(monkeypatch):
    """Run a test at smoke scale."""
    monkeypatch.setenv("DLH_SCALE", "smoke")


@pytest.fixture(autouse=True)
def _isolated_data(monkeypatch, tmp_path_factory):
    """Every test: smoke scale, an empty private data cache, and no mirror (tests read no real data)."""
    monkeypatch.setenv("DLH_SCALE", "smoke")
    monkeypatch.setenv("DLH_DATA", str(tmp_path_factory.mktemp("dlh-data")))
    monkeypatch.delenv("DLH_DATA_MIRROR", raising=False)
