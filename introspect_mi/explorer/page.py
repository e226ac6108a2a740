"""The explorer page: one self-contained HTML file built from a run folder.

plotly.js, the page's script (explorer.js) and its style (explorer.css) are inlined, and the
explorer data of every model label is embedded as JSON; the script draws the figures in the
browser for the selected item, so nothing is fetched from anywhere. The same page is served by
`introspect-mi explore RUN_DIR` and written by `--static`.
"""

from __future__ import annotations

import html
import json
import os
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

from plotly.offline import get_plotlyjs

from introspect_mi.explorer.data import explorer_files, read_explorer_data
from introspect_mi.store import atomic_write_text

REPORT_GLOBS = ("report.html", "*/report.html")


def explorer_payload(run_dir: Path) -> dict:
    """Every item of every explorer file, and the meta of each model label (its file's meta)."""
    items, meta = [], {}
    for path in explorer_files(run_dir):
        file_items, file_meta = read_explorer_data(path)
        items += [item.to_dict() for item in file_items]
        meta |= {item.label: file_meta for item in file_items}
    return {"items": items, "meta": meta}


def report_links(run_dir: Path, link_base: str) -> list[tuple[str, str]]:
    """(href, name) of the reports of later stages present in the run folder. The href is a
    percent-encoded relative URL, so a folder named `javascript:…` or holding `#` or `?` is a path,
    never a scheme, a fragment or a query."""
    found = sorted({p.relative_to(run_dir).as_posix() for g in REPORT_GLOBS for p in run_dir.glob(g) if p.is_file()})
    prefix = link_base.rstrip("/") + "/" if link_base not in ("", ".") else ""
    return [(quote(prefix + rel, safe="/"), rel) for rel in found]


def _results_html(links: list[tuple[str, str]]) -> str:
    if not links:
        return "<p>No later-stage reports in this run yet (probing, patching, SAE …).</p>"
    return "<ul>" + "".join(f'<li><a href="{html.escape(href)}">{html.escape(name)}</a></li>' for href, name in links) + "</ul>"


def _json_for_script(obj: object) -> str:
    """JSON that cannot end its <script> element early ("<" only occurs inside strings)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")


def _asset(name: str) -> str:
    return files("introspect_mi.explorer").joinpath(name).read_text(encoding="utf-8")


def build_page(run_dir: Path | str, link_base: str = "") -> str:
    """The page for a run folder; report links are relative to `link_base` (the run folder's URL)."""
    run_dir = Path(run_dir)
    payload = explorer_payload(run_dir)
    title = f"introspect-mi explorer · {run_dir.resolve().name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_asset("explorer.css")}</style>
<script>window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>
<script>{get_plotlyjs()}</script>
</head>
<body>
<header><h1>{html.escape(title)}</h1>
<p class="meta">{len(payload["items"])} items · labels: {html.escape(", ".join(payload["meta"]))}</p></header>
<nav class="controls">
  <label id="label-control">Model <select id="label-select"></select></label>
  <label>Item <select id="item-select"></select></label>
</nav>
<section><h2>Item</h2><dl id="summary"></dl></section>
<section><h2>Tokens</h2>
  <p class="legend"><span class="tok aligned">aligned P token</span> <span class="tok unmatched">P token without a one-to-one partner</span>
  <span class="tok p-last">P's last token</span> · hover a token to see its partner</p>
  <h3>Object-level prompt</h3><div id="object-tokens" class="tokens"></div>
  <h3>Hypothetical prompt</h3><div id="hypothetical-tokens" class="tokens"></div>
</section>
<section><h2>Residual-stream norms (log10 ‖resid_post‖)</h2><div id="norms" class="figure"></div></section>
<section><h2>Cosine similarity of the two runs at aligned P tokens</h2><div id="cosine-heatmap" class="figure"></div></section>
<section><h2>Logit lens</h2><div id="logit-lens" class="figure"></div><div id="logit-lens-table"></div></section>
<section id="results"><h2>Results</h2>{_results_html(report_links(run_dir, link_base))}</section>
<script type="application/json" id="explorer-data">{_json_for_script(payload)}</script>
<script>{_asset("explorer.js")}</script>
</body>
</html>
"""


def write_static(run_dir: Path | str, out: Path | str) -> Path:
    """Write the page as one self-contained HTML file; its report links point into the run folder."""
    out = Path(out)
    page = build_page(run_dir, link_base=Path(os.path.relpath(Path(run_dir).resolve(), out.resolve().parent)).as_posix())
    atomic_write_text(out, page)
    return out
