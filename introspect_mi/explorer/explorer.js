// The explorer page's script: draws the selected item's tokens, figures and tables from the
// JSON embedded in #explorer-data (schema: introspect_mi/explorer/data.py). Plain browser
// JavaScript plus the inlined plotly.js; nothing is fetched.
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  const labelSelect = document.getElementById("label-select");
  const itemSelect = document.getElementById("item-select");
  const PLOT_CONFIG = { responsive: true, displaylogo: false };
  const RUNS = { object: "object run, at P's last token", hypothetical: "hypothetical run, at the final token" };
  const TRACKS = { object_answer: "object answer", property_value: "property value" };

  // A token as readable text: newlines and tabs made visible.
  const show = (tok) => tok.replace(/\n/g, "↵").replace(/\t/g, "⇥");
  const layersOf = (item) => (DATA.meta[item.label] || {}).layers || item.norms_object.map((_, i) => i);
  const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(3));
  // A layer axis: whole layer numbers only, at most ~15 ticks.
  const layerAxis = (layers) => ({ title: { text: "layer" }, dtick: Math.max(1, Math.ceil(layers.length / 15)) });

  function element(tag, text, className) {
    const el = document.createElement(tag);
    if (text !== undefined) el.textContent = text;
    if (className) el.className = className;
    return el;
  }

  function fillLabels() {
    const labels = [...new Set(DATA.items.map((it) => it.label))];
    labelSelect.replaceChildren(...labels.map((l) => new Option(l, l)));
    document.getElementById("label-control").hidden = labels.length < 2;
  }

  function fillItems() {
    const options = [];
    DATA.items.forEach((it, i) => {
      if (it.label !== labelSelect.value) return;
      const mark = it.correct === null ? "" : it.correct ? " ✓" : " ✗";
      options.push(new Option(`${it.item_id} · ${it.task} / ${it.property}${mark}`, String(i)));
    });
    itemSelect.replaceChildren(...options);
  }

  function summary(item) {
    const a = item.alignment;
    const rows = [
      ["model", item.label], ["task", item.task], ["property", item.property],
      ["object answer", item.object_answer], ["its property value (right answer)", item.object_value],
      ["hypothetical answer", item.hypothetical_answer],
      ["correct", item.correct === null ? "–" : item.correct ? "yes" : "no"],
      ["aligned P tokens", `${a.pairs.length} (unmatched: ${a.unmatched_object.length} object, ${a.unmatched_hypothetical.length} hypothetical)`],
    ];
    document.getElementById("summary").replaceChildren(
      ...rows.flatMap(([k, v]) => [element("dt", k), element("dd", v === null ? "–" : String(v))]));
  }

  function tokenRow(id, tokens, pairSide, unmatched, last) {
    const pairOf = new Map(pairSide.map((t, k) => [t, k]));
    const skip = new Set(unmatched);
    const el = document.getElementById(id);
    el.replaceChildren();
    tokens.forEach((tok, i) => {
      const span = element("span", show(tok), "tok");
      span.title = `#${i} ${JSON.stringify(tok)}`;
      if (pairOf.has(i)) { span.classList.add("aligned"); span.dataset.pair = pairOf.get(i); }
      if (skip.has(i)) span.classList.add("unmatched");
      if (i === last) span.classList.add("p-last");
      el.append(span);
      if (tok.includes("\n")) el.append(document.createElement("br"));
    });
  }

  function tokens(item) {
    const a = item.alignment;
    tokenRow("object-tokens", item.object_tokens, a.pairs.map((p) => p[0]), a.unmatched_object, a.object_last);
    tokenRow("hypothetical-tokens", item.hypothetical_tokens, a.pairs.map((p) => p[1]), a.unmatched_hypothetical, a.hypothetical_last);
  }

  function normTrace(norms, toks, layers, axis, name) {
    return {
      type: "heatmap", name, xaxis: "x" + axis, yaxis: "y" + axis, coloraxis: "coloraxis", y: layers,
      z: norms.map((row) => row.map((v) => (v === null ? null : Math.log10(Math.max(v, 1e-12))))),
      text: norms.map((row) => row.map((v, i) => `${show(toks[i])}  ‖x‖ = ${fmt(v)}`)),
      hovertemplate: `${name} · layer %{y} · token %{x}: %{text}<extra></extra>`,
    };
  }

  function norms(item) {
    const layers = layersOf(item);
    const traces = [
      normTrace(item.norms_object, item.object_tokens, layers, "", "object"),
      normTrace(item.norms_hypothetical, item.hypothetical_tokens, layers, "2", "hypothetical"),
    ];
    Plotly.react("norms", traces, {
      height: 640, template: "plotly_white", grid: { rows: 2, columns: 1, pattern: "independent" },
      coloraxis: { colorscale: "Viridis", colorbar: { title: { text: "log10 norm" } } },
      xaxis: { title: { text: "object-level prompt token" } }, yaxis: layerAxis(layers),
      xaxis2: { title: { text: "hypothetical prompt token" } }, yaxis2: layerAxis(layers),
      margin: { t: 20 },
    }, PLOT_CONFIG);
  }

  function cosine(item) {
    const pairs = item.alignment.pairs;
    const ticks = pairs.map(([o]) => show(item.object_tokens[o]));
    const layers = layersOf(item);
    // The residual stream shares a large common direction, so raw cosines sit near 1: scale the
    // colours to this item's range (hover shows the value) instead of hiding the variation in [-1, 1].
    const values = item.cosine.flat().filter((v) => v !== null);
    Plotly.react("cosine-heatmap", [{
      type: "heatmap", z: item.cosine, x: pairs.map((_, k) => k), y: layers,
      zmin: Math.min(...values), zmax: Math.max(...values), colorscale: "Viridis",
      text: item.cosine.map((row) => row.map((_, k) => `${ticks[k]} (object #${pairs[k][0]}, hypothetical #${pairs[k][1]})`)),
      hovertemplate: "layer %{y} · %{text}<br>cosine %{z:.3f}<extra></extra>",
      colorbar: { title: { text: "cosine" } },
    }], {
      height: 520, template: "plotly_white", margin: { t: 20 },
      xaxis: { title: { text: "aligned P token" }, tickvals: pairs.map((_, k) => k), ticktext: ticks },
      yaxis: layerAxis(layers),
    }, PLOT_CONFIG);
  }

  function lensFigure(item) {
    const layers = layersOf(item);
    const traces = [];
    for (const run of Object.keys(RUNS)) {
      for (const [key, name] of Object.entries(TRACKS)) {
        const track = item.logit_lens[run][key];
        if (!track) continue;
        traces.push({
          type: "scatter", mode: "lines+markers", x: layers, y: track.prob, customdata: track.rank,
          name: `${run}: ${name} ${JSON.stringify(track.token)}`,
          line: { dash: run === "object" ? "dot" : "solid" },
          hovertemplate: "layer %{x}: p = %{y:.3g}, rank %{customdata}<extra>%{fullData.name}</extra>",
        });
      }
    }
    Plotly.react("logit-lens", traces, {
      height: 420, template: "plotly_white", margin: { t: 20 },
      xaxis: layerAxis(layers), yaxis: { title: { text: "probability" }, type: "log" },
    }, PLOT_CONFIG);
  }

  function lensTable(item) {
    const runs = Object.keys(RUNS);
    const table = element("table", undefined, "data");
    const head = table.createTHead().insertRow();
    head.append(element("th", "layer"));
    for (const run of runs) {
      const pos = item.logit_lens[run].position;
      const toks = run === "object" ? item.object_tokens : item.hypothetical_tokens;
      head.append(element("th", `${RUNS[run]} (#${pos} ${JSON.stringify(toks[pos])}): top tokens`));
    }
    const body = table.createTBody();
    layersOf(item).forEach((layer, l) => {
      const row = body.insertRow();
      row.append(element("td", String(layer), "num"));
      for (const run of runs) {
        row.append(element("td", item.logit_lens[run].top[l].map(([tok, p]) => `${JSON.stringify(tok)} ${fmt(p)}`).join("  ")));
      }
    });
    document.getElementById("logit-lens-table").replaceChildren(table);
  }

  function render() {
    const item = DATA.items[Number(itemSelect.value)];
    if (!item) return;
    summary(item);
    tokens(item);
    norms(item);
    cosine(item);
    lensFigure(item);
    lensTable(item);
  }

  // Hovering an aligned token highlights its partner in the other prompt.
  function highlight(event, on) {
    const pair = event.target.dataset && event.target.dataset.pair;
    if (pair === undefined) return;
    document.querySelectorAll(`.tok[data-pair="${pair}"]`).forEach((el) => el.classList.toggle("hl", on));
  }

  document.addEventListener("mouseover", (e) => highlight(e, true));
  document.addEventListener("mouseout", (e) => highlight(e, false));
  labelSelect.addEventListener("change", () => { fillItems(); render(); });
  itemSelect.addEventListener("change", render);
  fillLabels();
  fillItems();
  render();
})();
