"""The interactive explorer: tokens, alignment, norms, cosine and logit lens per item of a run.

Capture writes `RUN_DIR/<label>/explorer.json` with `write_explorer_data`; `introspect-mi
explore RUN_DIR` serves the page on 127.0.0.1, or `--static OUT.html` writes it as one file.
"""

from introspect_mi.explorer.data import (
    CAPTURE_COMMAND, FILE_NAME, SCHEMA, ExplorerItem, LogitLens, TokenTrack, explorer_files, explorer_path,
    read_explorer_data, validate, write_explorer_data,
)
from introspect_mi.explorer.page import build_page, write_static
from introspect_mi.explorer.server import make_server, resolve_inside, serve, url_of

__all__ = [
    "CAPTURE_COMMAND", "FILE_NAME", "SCHEMA", "ExplorerItem", "LogitLens", "TokenTrack", "build_page",
    "explorer_files", "explorer_path", "make_server", "read_explorer_data", "resolve_inside", "serve",
    "url_of", "validate", "write_explorer_data", "write_static",
]
