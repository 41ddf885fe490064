"""``seqrec serve``: a bundle behind HTTP JSON, on the standard library's ``ThreadingHTTPServer``.

Routes:
- ``GET /health`` -> ``{"status": "ok", "items": C}``;
- ``GET /metadata`` -> the manifest without checksums (model, catalog, retrieval, versions, metrics);
- ``POST /recommend`` with ``{"histories": {user: [item, ...]}, "k": 10, "exclude_seen": true,
  "items": [...], "exclude_items": [...]}`` -> ``{"k": k, "recommendations": [{"user", "items",
  "scores"}], "warnings": [...]}`` (the fallbacks of ``Recommender.recommend``, one line each).

Bad requests get a JSON ``{"error": "..."}`` and a 4xx: 400 (not JSON, not UTF-8), 411 (no
Content-Length), 413 (body over ``MAX_BODY`` bytes, more than ``MAX_USERS`` users, a history over
``MAX_HISTORY`` items, a list over ``MAX_LIST`` ids), 422 (well-formed but invalid: a wrong type,
an unknown key, k outside 1..``MAX_K``, ids of the wrong kind), 404 (unknown route), 405 (wrong
method). The server keeps serving after each. Requests are answered one at a time (a lock): the
encoder already uses every core it is given, and the warnings of one request stay its own.
"""

from __future__ import annotations

import json
import sys
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from seqrec.errors import SeqrecError
from seqrec.serving.recommender import Recommender

MAX_BODY = 8 << 20
MAX_USERS = 1000
MAX_HISTORY = 10_000
MAX_LIST = 100_000
MAX_K = 1000
FIELDS = {"histories", "k", "exclude_seen", "items", "exclude_items"}


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _ids(values: Any, integer: bool, where: str) -> list:
    """A JSON list of raw item ids, cast as ``seqrec recommend`` casts file ids (ints for an integer
    catalog, text otherwise)."""
    if not isinstance(values, list):
        raise RequestError(422, f"{where} must be a list of item ids, got {type(values).__name__}")
    if len(values) > (MAX_HISTORY if where.startswith("histories") else MAX_LIST):
        raise RequestError(413, f"{where} holds {len(values)} ids, more than this server takes")
    if not integer:
        if any(not isinstance(v, str | int) or isinstance(v, bool) for v in values):
            raise RequestError(422, f"{where}: ids must be strings or integers")
        return [str(v) for v in values]
    try:
        if any(isinstance(v, bool | float) for v in values):
            raise ValueError
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise RequestError(422, f"{where}: ids must be integers for this catalog") from None


def parse_request(body: bytes, integer: bool) -> dict[str, Any]:
    """A /recommend body -> keyword arguments of ``Recommender.recommend``; ``RequestError`` if bad."""
    try:
        req = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(400, f"request body is not valid JSON ({e})") from None
    if not isinstance(req, dict):
        raise RequestError(422, 'request must be a JSON object {"histories": {...}, "k": ...}')
    extra = sorted(set(req) - FIELDS)
    if extra:
        raise RequestError(422, f"unknown field {extra[0]!r}; fields: {', '.join(sorted(FIELDS))}")
    hist = req.get("histories")
    if not isinstance(hist, dict):
        raise RequestError(422, '"histories" must be an object {user: [item, ...]}')
    if len(hist) > MAX_USERS:
        raise RequestError(413, f"{len(hist)} users in one request; at most {MAX_USERS}")
    k = req.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise RequestError(422, f'"k" must be an integer in 1..{MAX_K}, got {k!r}')
    seen = req.get("exclude_seen", True)
    if not isinstance(seen, bool):
        raise RequestError(422, f'"exclude_seen" must be true or false, got {seen!r}')
    out = {"histories": {u: _ids(v, integer, f"histories[{u!r}]") for u, v in hist.items()},
           "k": k, "exclude_seen": seen}
    for key in ("items", "exclude_items"):
        if req.get(key) is not None:
            out[key] = _ids(req[key], integer, key)
    return out


def answer(rec: Recommender, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run one request -> the response object (recommendations per user, in request order)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            df = rec.recommend(**kwargs)
        except SeqrecError as e:
            raise RequestError(422, str(e)) from None
    recs = [{"user": u, "items": items, "scores": scores} for u, items, scores in
            df.group_by("user", maintain_order=True).agg("item", "score").iter_rows()]
    return {"k": kwargs["k"], "recommendations": recs, "warnings": [str(w.message) for w in caught]}


class Handler(BaseHTTPRequestHandler):
    """One connection's requests; the server object carries ``recommender`` and ``lock``."""

    server_version = "seqrec-serve"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms delayed-ACK stall)
    timeout = 30  # a client that stops sending mid-request loses its connection, not a thread forever

    def _send(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, status: int, message: str) -> None:
        self._send(status, {"error": message})

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        if self.path == "/health":
            self._send(200, {"status": "ok", "items": self.server.recommender.n_items})
        elif self.path == "/metadata":
            self._send(200, self.server.recommender.metadata())
        elif self.path == "/recommend":
            self._fail(405, "use POST /recommend")
        else:
            self._fail(404, f"no route {self.path}; routes: GET /health, GET /metadata, POST /recommend")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/recommend":
            self._fail(404 if self.path not in ("/health", "/metadata") else 405, f"no route POST {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._fail(411, "a Content-Length header is required")
            return
        if length > MAX_BODY or length < 0:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            self._fail(413, f"request body of {length} bytes; at most {MAX_BODY}")
            return
        body = self.rfile.read(length)
        rec = self.server.recommender
        try:
            kwargs = parse_request(body, rec.integer_ids)
            with self.server.lock:
                self._send(200, answer(rec, kwargs))
        except RequestError as e:
            self._fail(e.status, str(e))
        except Exception as e:  # a bug must not take the server down: report it, keep serving
            sys.stderr.write(f"internal error: {type(e).__name__}: {e}\n")
            self._fail(500, f"internal error ({type(e).__name__})")

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


def make_server(rec: Recommender, host: str = "127.0.0.1", port: int = 8000,
                quiet: bool = False) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (port 0: a free one, see ``server.server_address``); call
    ``serve_forever()`` on it (``shutdown()`` from another thread stops it). Each request is logged
    on stderr as one line unless ``quiet`` (errors always are)."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.recommender = rec
    server.lock = threading.Lock()
    server.quiet = quiet
    return server
