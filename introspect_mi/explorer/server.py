"""Serve the explorer page and the run folder's files, read-only, on 127.0.0.1.

`/` (and `/index.html`) is the explorer page, built once at start (restart to see new results);
any other path is a file of the run folder (reports, tables), never one outside it: the URL path
is resolved once (symbolic links and `..`, encoded or not, in the order the file system follows
them), a resolved path outside the folder is answered 404, and exactly that resolved path is
served. Requests whose Host header is not this server (127.0.0.1, localhost or [::1] with its
port) are refused with 421, so a web page that rebinds its DNS name to 127.0.0.1 cannot read the
run folder. Only GET and HEAD exist.
"""

from __future__ import annotations

import errno
import signal
import sys
import webbrowser
from functools import partial
from http import HTTPStatus
from io import BytesIO
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from introspect_mi.errors import UserError
from introspect_mi.explorer.page import build_page

HOST = "127.0.0.1"
PAGE_PATHS = ("/", "/index.html")
INDEX_FILES = ("index.html", "index.htm")  # what SimpleHTTPRequestHandler serves for a folder


def resolve_inside(root: Path, url_path: str) -> Path | None:
    """The path under `root` that a URL path names, or None if it would lead outside `root`."""
    root = root.resolve()
    try:
        target = (root / unquote(urlsplit(url_path).path).lstrip("/")).resolve()
    except (OSError, ValueError):  # e.g. an embedded NUL byte
        return None
    return target if _within(root, target) else None


def _within(root: Path, resolved: Path) -> bool:
    return resolved == root or root in resolved.parents


def _index_leads_out(root: Path, folder: Path) -> bool:
    """Whether the index file the base handler would serve for `folder` resolves outside `root`."""
    return any(not _within(root, (folder / name).resolve()) for name in INDEX_FILES if (folder / name).is_file())


def allowed_hosts(port: int) -> frozenset[str]:
    """Host header values that name this server (browsers send the port unless it is 80)."""
    names = ("127.0.0.1", "localhost", "[::1]")
    return frozenset(f"{n}:{port}" for n in names) | (frozenset(names) if port == 80 else frozenset())


class ExplorerHandler(SimpleHTTPRequestHandler):
    """The page at `/`, the run folder's files elsewhere; quiet (no per-request log lines)."""

    def __init__(self, *args, page: bytes, root: Path, **kwargs) -> None:
        self.page = page
        self.root = root
        self.target: Path | None = None
        super().__init__(*args, directory=str(root), **kwargs)

    def translate_path(self, path: str) -> str:
        """The path resolved (and checked) in send_head: what is served is what was checked."""
        assert self.target is not None
        return str(self.target)

    def send_head(self):
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in allowed_hosts(self.server.server_address[1]):
            self.send_error(HTTPStatus.MISDIRECTED_REQUEST, "this server answers only to 127.0.0.1, localhost or [::1] with its port")
            return None
        if urlsplit(self.path).path in PAGE_PATHS:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(self.page)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return BytesIO(self.page)
        self.target = resolve_inside(self.root, self.path)
        if self.target is None or (self.target.is_dir() and _index_leads_out(self.root.resolve(), self.target)):
            self.send_error(HTTPStatus.NOT_FOUND, "outside the run folder")
            return None
        return super().send_head()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


def make_server(run_dir: Path | str, port: int = 0) -> ThreadingHTTPServer:
    """A server for the run folder on 127.0.0.1:`port` (0: any free port), not yet serving."""
    if not 0 <= port <= 65535:
        raise UserError(f"port {port} is out of range", "pass a --port from 1 to 65535, or --port 0 for any free one")
    root = Path(run_dir).resolve()
    page = build_page(root).encode("utf-8")
    handler = partial(ExplorerHandler, page=page, root=root)
    try:
        return ThreadingHTTPServer((HOST, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} is in use", "pass another --port, or --port 0 for any free one") from exc
        raise


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM stop the server cleanly, even where the shell started this process with
    SIGINT ignored (a background job in a script), which Python would otherwise keep."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def serve(run_dir: Path | str, port: int = 0, open_browser: bool = True) -> None:
    """Serve until Ctrl-C (or SIGTERM); prints the URL on stdout, everything else on stderr."""
    server = make_server(run_dir, port)
    url = url_of(server)
    try:
        _stop_on_signals()
        print(f"explorer for {Path(run_dir)} at {url} (Ctrl-C stops it)", file=sys.stderr)
        print(url, flush=True)
        if open_browser:
            webbrowser.open(url)
        server.serve_forever()
    except KeyboardInterrupt:
        print("explorer stopped", file=sys.stderr)
    finally:
        server.server_close()
