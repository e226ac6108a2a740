"""The explorer: its data file round-trips, the server never leaves the run folder, the static page
is self-contained, and a real headless Chromium draws the cosine heatmap and redraws it when
another item is selected.

The browser tests (fixture `browser` in tests/conftest.py) need /usr/bin/chromium (`make browser` installs it) and Playwright's Python
package (the `test` extra); it fails when they are missing unless INTROSPECT_MI_SKIP_BROWSER=1.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from introspect_mi.alignment import Alignment
from introspect_mi.cli import main
from introspect_mi.errors import UserError
from introspect_mi.explorer import (
    ExplorerItem, LogitLens, TokenTrack, build_page, explorer_path, make_server, read_explorer_data,
    resolve_inside, url_of, write_explorer_data, write_static,
)


N_LAYERS = 4


def make_item(item_id: str, label: str = "M1", n_pairs: int = 3, seed: int = 0) -> ExplorerItem:
    """A consistent synthetic item: P = "a b c…" quoted in the hypothetical prompt."""
    p_tokens = [f" w{k}" for k in range(n_pairs)]
    obj = ["<|im_start|>", "user", "\n", *p_tokens, "<|im_end|>"]
    hyp = ["<|im_start|>", "user", "\n", "Previously", ' "', *p_tokens, '"', " length?", "<|im_end|>"]
    pairs = [(3 + k, 5 + k) for k in range(n_pairs)]
    value = lambda layer, k: round(0.5 + 0.1 * ((layer * 7 + k * 3 + seed) % 5), 2)  # noqa: E731
    track = lambda token: TokenTrack(token, [N_LAYERS - layer for layer in range(N_LAYERS)], [0.125 * (layer + 1) for layer in range(N_LAYERS)])  # noqa: E731
    lens = lambda pos: LogitLens(pos, [[(" cat", 0.5), (" dog", 0.25)] for _ in range(N_LAYERS)], track(" cat"), track("3"))  # noqa: E731
    return ExplorerItem(
        item_id=item_id, task="animals", property="length", label=label,
        object_tokens=obj, hypothetical_tokens=hyp,
        alignment=Alignment(pairs=pairs, unmatched_object=[], unmatched_hypothetical=[],
                            object_last=pairs[-1][0], hypothetical_last=pairs[-1][1]),
        object_answer="cat", object_value="3", hypothetical_answer="3", correct=True,
        norms_object=[[10.0 * (layer + 1) + t for t in range(len(obj))] for layer in range(N_LAYERS)],
        norms_hypothetical=[[20.0 * (layer + 1) + t for t in range(len(hyp))] for layer in range(N_LAYERS)],
        cosine=[[value(layer, k) for k in range(n_pairs)] for layer in range(N_LAYERS)],
        logit_lens={"object": lens(pairs[-1][0]), "hypothetical": lens(len(hyp) - 1)},
    )


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run folder with explorer data for one label (3 items) and two later-stage reports."""
    run = tmp_path / "run"
    items = [make_item("animals-0", n_pairs=3), make_item("animals-1", n_pairs=2, seed=1), make_item("animals-2", n_pairs=4, seed=2)]
    write_explorer_data(explorer_path(run, "M1"), items, {"model": "tiny", "layers": list(range(N_LAYERS))})
    for stage in ("probing", "patching"):
        (run / stage).mkdir()
        (run / stage / "report.html").write_text(f"<html><body>{stage} report</body></html>")
    return run


# --- the data file ---------------------------------------------------------------------------

def test_items_round_trip_through_the_json_file(tmp_path: Path) -> None:
    items = [make_item("a"), make_item("b", label="M1-ft", n_pairs=1, seed=3)]
    path = write_explorer_data(tmp_path / "M1" / "explorer.json", items, {"model": "tiny"})
    back, meta = read_explorer_data(path)
    assert back == items and meta == {"model": "tiny"}
    assert json.loads(path.read_text())["schema"] == "introspect_mi.explorer/1"


def test_floats_are_rounded_and_non_finite_values_become_null(tmp_path: Path) -> None:
    item = make_item("a")
    item.cosine[0][0], item.cosine[1][1] = 0.123456789, float("nan")
    back, _ = read_explorer_data(write_explorer_data(tmp_path / "x.json", [item], {}))
    assert back[0].cosine[0][0] == 0.12346 and back[0].cosine[1][1] is None


@pytest.mark.parametrize("break_it, problem", [
    (lambda it: it.cosine[2].pop(), "cosine row"),
    (lambda it: it.norms_hypothetical.pop(), "layer count"),
    (lambda it: it.norms_object[0].append(1.0), "norms_object row"),
    (lambda it: it.alignment.unmatched_object.append(99), "outside the object tokens"),
    (lambda it: it.logit_lens.pop("object"), "logit_lens keys"),
    (lambda it: it.logit_lens["hypothetical"].top.pop(), "layers long"),
])
def test_inconsistent_items_are_refused_on_write_and_read(tmp_path: Path, break_it, problem: str) -> None:
    item = make_item("a")
    break_it(item)
    with pytest.raises(ValueError, match=problem):
        write_explorer_data(tmp_path / "x.json", [item], {})
    (tmp_path / "y.json").write_text(json.dumps({"schema": "introspect_mi.explorer/1", "meta": {}, "items": [item.to_dict()]}))
    with pytest.raises(UserError, match=problem):
        read_explorer_data(tmp_path / "y.json")


def test_a_file_that_is_not_explorer_data_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text(json.dumps({"schema": "other/9", "items": []}))
    with pytest.raises(UserError, match="cannot read"):
        read_explorer_data(tmp_path / "a.json")
    with pytest.raises(UserError, match="not explorer data"):
        read_explorer_data(tmp_path / "b.json")


# --- page, static file, CLI ------------------------------------------------------------------

def test_static_page_is_self_contained(run_dir: Path, tmp_path: Path) -> None:
    out = write_static(run_dir, tmp_path / "site" / "explorer.html")
    page = out.read_text()
    assert '<script src="http' not in page and "<link" not in page  # nothing fetched
    assert "Plotly" in page and len(page) > 1_000_000  # plotly.js inlined
    assert [it["item_id"] for it in json.loads(embedded_data(page))["items"]] == ["animals-0", "animals-1", "animals-2"]
    # report links are relative to the written file and lead to the run folder's reports
    for stage in ("probing", "patching"):
        href = f"../run/{stage}/report.html"
        assert f'href="{href}"' in page and (out.parent / href).resolve() == (run_dir / stage / "report.html").resolve()


def test_embedded_json_cannot_close_its_script_element(run_dir: Path) -> None:
    item = make_item("x", label="M2")
    item.object_tokens[1] = "</script><script>alert(1)</script>"
    write_explorer_data(explorer_path(run_dir, "M2"), [item], {})
    page = build_page(run_dir)
    assert "</script><script>alert(1)" not in page
    data = json.loads(embedded_data(page))  # the element ends where the JSON does, and holds the token intact
    assert [it["object_tokens"][1] for it in data["items"] if it["label"] == "M2"] == [item.object_tokens[1]]


def embedded_data(page: str) -> str:
    return page.split('<script type="application/json" id="explorer-data">')[1].split("</script>")[0]


@pytest.mark.parametrize("run, problem", [("empty", "no explorer data"), ("missing", "does not exist")])
def test_run_without_explorer_data_names_the_command_that_makes_it(tmp_path: Path, capsys, run: str, problem: str) -> None:
    (tmp_path / "empty" / "M1").mkdir(parents=True)
    assert main(["explore", str(tmp_path / run), "--static", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert problem in err and "python -m experiments.capture --preset quick" in err
    assert not (tmp_path / "o.html").exists()


def test_cli_static_writes_the_page_and_prints_its_path(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "page.html"
    assert main(["explore", str(run_dir), "--static", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and 'id="cosine-heatmap"' in out.read_text()


# --- server ------------------------------------------------------------------------------------

def test_resolve_inside_refuses_every_way_out(tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / "probing").mkdir(parents=True)
    (root / "probing" / "report.html").write_text("r")
    (tmp_path / "secret.txt").write_text("s")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    assert resolve_inside(root, "/probing/report.html?x=1") == (root / "probing" / "report.html").resolve()
    assert resolve_inside(root, "/") == root.resolve()
    for bad in ("/../secret.txt", "/probing/../../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt",
                "//etc/passwd/../../../secret.txt", "/escape", "/a%00b"):
        assert resolve_inside(root, bad) is None, bad


@pytest.fixture()
def server_url(run_dir: Path) -> Iterator[str]:
    server = make_server(run_dir, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url_of(server)
    finally:
        server.shutdown()
        server.server_close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_server_serves_the_page_and_run_files_and_nothing_outside(server_url: str, run_dir: Path) -> None:
    (run_dir.parent / "secret.txt").write_text("secret")
    status, body = get(server_url)
    assert status == 200 and b'id="cosine-heatmap"' in body
    assert get(server_url + "probing/report.html") == (200, b"<html><body>probing report</body></html>")
    for bad in ("../secret.txt", "%2e%2e/secret.txt", "probing/%2e%2e/%2e%2e/secret.txt"):
        status, body = get(server_url + bad)
        assert status == 404 and b"secret" not in body
    post = urllib.request.Request(server_url + "probing/report.html", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(post, timeout=10)
    assert exc.value.code == 501  # read-only: no method writes


def _ignoring_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("sigint_ignored_at_start", [False, True])
def test_cli_serves_until_stopped_printing_only_the_url_on_stdout(run_dir: Path, stop: int, sigint_ignored_at_start: bool) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "introspect_mi.cli", "explore", str(run_dir), "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ignoring_sigint if sigint_ignored_at_start else None)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and get(url)[0] == 200
    finally:
        proc.send_signal(stop)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0 and out == "" and "stopped" in err and url in err


def test_busy_port_is_a_user_error(run_dir: Path) -> None:
    first = make_server(run_dir, port=0)
    try:
        with pytest.raises(UserError, match="in use"):
            make_server(run_dir, port=first.server_address[1])
    finally:
        first.server_close()


# --- a real browser -------------------------------------------------------------------------------

HEATMAP = "() => { const d = document.getElementById('cosine-heatmap').data; return d && d[0].type === 'heatmap' ? d[0].z : null; }"


def test_browser_draws_the_heatmap_and_redraws_it_for_another_item(browser, server_url: str, run_dir: Path) -> None:
    page = browser.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server_url)
    page.wait_for_function(HEATMAP)
    first = page.evaluate(HEATMAP)
    items, _ = read_explorer_data(explorer_path(run_dir, "M1"))
    assert first == items[0].cosine and len(first) == N_LAYERS  # one row per layer
    assert page.locator("#cosine-heatmap .main-svg").count() > 0  # Plotly really drew it
    assert page.locator("#object-tokens .tok.aligned").count() == len(items[0].alignment.pairs)
    assert page.locator("#label-control").is_hidden()  # one label: no model selector

    page.select_option("#item-select", index=2)
    page.wait_for_function(f"() => document.getElementById('cosine-heatmap').data[0].z[0].length === {len(items[2].alignment.pairs)}")
    second = page.evaluate(HEATMAP)
    assert second == items[2].cosine and second != first
    assert page.locator("#object-tokens .tok.aligned").count() == len(items[2].alignment.pairs)
    assert page.locator("#logit-lens-table tbody tr").count() == N_LAYERS
    assert [a.get_attribute("href") for a in page.locator("#results a").all()] == ["patching/report.html", "probing/report.html"]
    assert errors == [] and all(u.startswith(server_url) for u in requests)  # nothing fetched from elsewhere
    page.close()


def test_browser_switches_model_labels(browser, run_dir: Path, tmp_path: Path) -> None:
    write_explorer_data(explorer_path(run_dir, "M2"), [make_item("animals-0", label="M2", n_pairs=1, seed=4)], {})
    out = write_static(run_dir, tmp_path / "explorer.html")
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(out.as_uri())
    page.wait_for_function(HEATMAP)
    assert page.locator("#label-control").is_visible()
    page.select_option("#label-select", "M2")
    page.wait_for_function("() => document.getElementById('cosine-heatmap').data[0].z[0].length === 1")
    assert page.locator("#item-select option").count() == 1
    page.close()


# --- server hardening (issue 16, 11) -----------------------------------------------------------

def raw_get(url: str, path: str, host: str | None = None) -> tuple[int, bytes]:
    """GET `path` sent as is (no client-side normalisation of `..`), optionally with another Host header."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_server_serves_exactly_the_path_it_checked(run_dir: Path) -> None:
    """An inward link followed by `..%2f`: resolved, it names a path inside the folder; read
    lexically (as the base handler did), it walks through an outward link to a file outside."""
    outside = run_dir.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (run_dir / "a" / "b").mkdir(parents=True)
    (run_dir / "inward").symlink_to(run_dir / "a" / "b")
    (run_dir / "out").symlink_to(outside)
    (run_dir / "a" / "out").mkdir()
    (run_dir / "a" / "out" / "secret.txt").write_text("inside")
    (run_dir / "c").mkdir()
    (run_dir / "c" / "index.html").symlink_to(outside / "secret.txt")
    server = make_server(run_dir, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = url_of(server)
        assert raw_get(url, "/inward/..%2fout/secret.txt") == (200, b"inside")  # resolved: run/a/out/secret.txt
        assert raw_get(url, "/out/secret.txt")[0] == 404
        status, body = raw_get(url, "/c/")  # a folder whose index file leads out
        assert status == 404 and b"secret" not in body
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("host, status", [
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("[::1]:{port}", 200),
    ("evil.example:{port}", 421), ("127.0.0.1", 421), ("localhost:1", 421), ("", 421),
])
def test_server_answers_only_to_its_own_host_names(server_url: str, host: str, status: int) -> None:
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends Host: evil.example."""
    port = int(server_url.rsplit(":", 1)[1].strip("/"))
    got, body = raw_get(server_url, "/probing/report.html", host=host.format(port=port))
    assert got == status and (b"probing report" in body) == (status == 200)


@pytest.mark.parametrize("name", ["javascript:alert(1)", "a#b", "q?x=1", "sp ace%"])
def test_report_links_are_paths_whatever_the_folder_names(tmp_path: Path, name: str) -> None:
    from urllib.parse import unquote, urlsplit

    from introspect_mi.explorer.page import report_links

    run = tmp_path / name
    (run / name).mkdir(parents=True)
    (run / name / "report.html").write_text("r")
    (links,) = report_links(run, "")
    (static,) = report_links(run, name)  # a static page beside the run folder links through its name
    for href, rel in (links, (static[0], f"{name}/{name}/report.html")):
        parts = urlsplit(href)
        assert not parts.scheme and not parts.fragment and not parts.query, href
        assert unquote(parts.path) == rel
