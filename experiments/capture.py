"""Capture activations on the behavioural study's held-out items (issue 5).

    python -m experiments.capture --preset quick

For each subject (untrained M1, self-trained M1; `cross` = cross-trained M2 on request) it
captures, for every held-out item, the object-level prompt P and, for every property the study
scored, the hypothetical prompt quoting P: resid_post of every layer at P's last token, the
final prompt token and the first greedy answer token, with the study's labels and the P-token
alignment. Then the logit lens at those positions and the explorer's per-item token views.
Output: runs/mech-<study>/<subject>/{store/, logit_lens*.jsonl, explorer.json},
runs/mech-<study>/logit_lens/report.html; `introspect-mi explore runs/mech-<study>` browses it.
Resumable: a killed capture continues after its last complete shard. Each store records what it
was made from (the study's config, the subject's weights fingerprint, the items, the labels): a
rerun reuses a finished capture only when all of these are unchanged, and refuses a store made
from another state of the study (capture into a new --name, or delete the run folder).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from experiments.common import config_main
from experiments.mech_engine import check_engine, engine_of, subject_handle
from experiments.mech import (
    SUBJECTS, PromptPair, StudyChoice, StudyView, Subject, capture_identity, check_identity, open_study, prompt_pairs, resolved,
)
from introspect_mi import config as cfg
from introspect_mi.actstore import INFO as STORE_INFO
from introspect_mi.actstore import ActivationStore
from introspect_mi.alignment import Alignment, align
from introspect_mi.capture import CapturePrompt, CaptureSpec, all_places, capture
from introspect_mi.errors import UserError
from introspect_mi.explorer.data import ExplorerItem, LogitLens, TokenTrack, explorer_path, write_explorer_data
from introspect_mi.logit_lens import first_rise, first_token, lens_summary, lens_table
from introspect_mi.models import ModelHandle
from introspect_mi.paths import runs_dir
from introspect_mi.store import RunDir
from introspect_mi.timing import StageClock
from introspect_mi.token_views import token_views
from introspect_mi.viz import Section, Table, write_report
from introspect_mi.viz.lens import lens_rank_figure


@dataclass(frozen=True)
class CaptureConfig(StudyChoice):
    subjects: tuple[str, ...] = ("untrained", "self")
    """Models to capture: untrained (M1), self (self-trained M1), cross (cross-trained M2)."""
    positions: tuple[str, ...] = ("p_last", "final", "answer_first")
    """Token positions to store: p_last, final, answer_first, p_tokens, all."""
    place_kinds: tuple[str, ...] = ("resid_post",)
    """Place kinds captured at every layer: resid_post, resid_pre, attn_out, mlp_out."""
    dtype: str = "float16"
    """Storage dtype of the activations: float16, bfloat16 or float32."""
    batch_size: int = 8
    """Prompts per forward pass."""
    shard_records: int = 128
    """Prompts per shard (the most the capture holds in memory)."""
    prefix_reuse: bool = True
    """Run each batch's shared demonstration prefix once and reuse its KV cache (hooks engine;
    equal to plain batches within float rounding). --no-prefix-reuse: plain left-padded batches,
    bit for bit what --engine nnsight stores."""
    top_k: int = 5
    """Top tokens kept per layer by the logit lens."""
    explorer_items: int = 40
    """Item × property pairs with per-token views in the explorer (spread over tasks)."""
    name: str = ""
    """Run folder under runs/ (empty: mech-<study>)."""
    seed: int = 0
    """Recorded for provenance (capture itself is deterministic)."""
    engine: str = "hooks"
    """hooks (raw HF hooks) or nnsight (nnsight traces: the same activations, and they run on NDIF)."""
    remote: str = ""
    """Hub id of M1 on NDIF (e.g. meta-llama/Llama-3.1-70B-Instruct): run the nnsight traces there (needs --engine nnsight, --subjects untrained, NDIF_API_KEY)."""


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def capture_prompts(handle: ModelHandle, pairs: Sequence[PromptPair]) -> list[CapturePrompt]:
    """Object records (one per item, first) then hypothetical records (one per pair)."""
    fmt = handle.prompt_format
    objects: dict[str, CapturePrompt] = {}
    values: dict[str, dict] = {}
    for p in pairs:
        values.setdefault(p.item_id, {})[p.property] = p.labels["object_value"]
        if p.item_id not in objects:
            objects[p.item_id] = CapturePrompt(p.object_prompt.text, p.object_prompt.p_span, {
                "item_id": p.item_id, "kind": "object", "task": p.task, "property": None,
                "object_answer": p.labels["object_answer"]})
    out = [CapturePrompt(o.text, o.p_span, {**o.record, "values": values[i]}) for i, o in objects.items()]
    for p in pairs:
        o_ids, o_off = fmt.encode_with_offsets(p.object_prompt.text)
        h_ids, h_off = fmt.encode_with_offsets(p.hypothetical_prompt.text)
        alignment = align(o_off, p.object_prompt.p_span, h_off, p.hypothetical_prompt.p_span, o_ids, h_ids)
        out.append(CapturePrompt(p.hypothetical_prompt.text, p.hypothetical_prompt.p_span, {
            "item_id": p.item_id, "kind": "hypothetical", "task": p.task, "property": p.property, **p.labels,
            "alignment": alignment.to_dict()}))
    return out


def run_lens(handle: ModelHandle, run: RunDir, subject: Subject, store, top_k: int) -> tuple[pd.DataFrame, dict]:
    """Logit lens at the object run's P-last and final tokens and the hypothetical final token."""
    records = store.records
    answer_of = {r.item_id: r.answer_token_id for r in records.itertuples() if r.kind == "object"}
    tables = []
    obj = records["kind"] == "object"
    for position in ("p_last", "final"):
        targets = {"answer": [answer_of[i] for i in records.loc[obj, "item_id"]]}
        tables.append(lens_table(handle, store, position, targets, filter={"kind": "object"}, top_k=top_k).assign(run="object", position=position))
    hyp = records[~obj]
    targets = {"answer": [answer_of[i] for i in hyp["item_id"]],
               "property": [first_token(handle, v) for v in hyp["object_value"]]}
    hyp_table = lens_table(handle, store, "final", targets, filter={"kind": "hypothetical"}, top_k=top_k).assign(run="hypothetical", position="final")
    tables.append(hyp_table)
    table = pd.concat(tables, ignore_index=True)
    run.write_table(f"{subject.label}/logit_lens", table)
    summary = lens_summary(hyp_table, ["answer", "property"])
    run.write_table(f"{subject.label}/logit_lens_summary", summary, csv=True)
    return table, {"answer_first_top10_layer": first_rise(summary, "answer"),
                   "property_first_top10_layer": first_rise(summary, "property"), "n_hypothetical": int(len(hyp))}


def spread(pairs: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to `n` rows taking each task in turn, so every task shows up in the explorer."""
    order = pairs.assign(_turn=pairs.groupby("task").cumcount()).sort_values(["_turn", "record"], kind="stable")
    return order.head(n).drop(columns="_turn")


def _track(rows: pd.DataFrame, name: str, token: str | None) -> TokenTrack | None:
    if token is None or rows[f"{name}_rank"].isna().any():
        return None
    return TokenTrack(token, [int(r) + 1 for r in rows[f"{name}_rank"]], rows[f"{name}_prob"].tolist())


def _lens(rows: pd.DataFrame, position: int, answer: str | None, value: str | None) -> LogitLens:
    rows = rows.sort_values("layer")
    top = [list(zip(t, p)) for t, p in zip(rows["top_tokens"], rows["top_probs"])]
    property_track = _track(rows, "property", value) if "property_rank" in rows else None
    return LogitLens(position, top, _track(rows, "answer", answer), property_track)


def write_explorer(handle: ModelHandle, run: RunDir, label: str, store, table: pd.DataFrame, prompts: Sequence[CapturePrompt],
                   n_items: int, batch_size: int) -> int:
    """The explorer's per-item views for `n_items` hypothetical records spread over tasks."""
    records = store.records
    objects = records[records["kind"] == "object"].set_index("item_id")
    chosen = spread(records[records["kind"] == "hypothetical"], n_items)
    lens = table.groupby(["record", "run", "position"])
    items = []
    rows = list(chosen.itertuples())
    for start in tqdm(range(0, len(rows), batch_size), desc=f"explorer views {label}", unit="batch"):
        chunk = rows[start : start + batch_size]
        triples = [(prompts[int(objects.loc[h.item_id].record)], prompts[int(h.record)], Alignment.from_dict(h.alignment)) for h in chunk]
        for hyp, (_, _, alignment), views in zip(chunk, triples, token_views(handle, triples)):
            obj = objects.loc[hyp.item_id]
            answer = obj.answer_token
            value = hyp.object_value if isinstance(hyp.object_value, str) else None
            value_token = None if value is None else handle.tokenizer.decode([first_token(handle, value)])
            items.append(ExplorerItem(
                item_id=hyp.item_id, task=hyp.task, property=hyp.property, label=label, object_tokens=list(obj.tokens),
                hypothetical_tokens=list(hyp.tokens), alignment=alignment, object_answer=hyp.object_answer,
                object_value=value, hypothetical_answer=hyp.hypothetical_answer, correct=bool(hyp.correct),
                norms_object=views.norms_object, norms_hypothetical=views.norms_hypothetical, cosine=views.cosine,
                logit_lens={"object": _lens(lens.get_group((int(obj.record), "object", "p_last")), int(obj.positions["p_last"][0]), answer, None),
                            "hypothetical": _lens(lens.get_group((int(hyp.record), "hypothetical", "final")), int(hyp.positions["final"][0]), answer, value_token)},
            ))
    write_explorer_data(explorer_path(run.folder, label), items, {"model": handle.name, "layers": list(range(handle.n_layers))})
    return len(items)


def capture_subject(view: StudyView, run: RunDir, label: str, config: CaptureConfig, clock: StageClock) -> dict:
    """Capture, logit lens and explorer views of one subject (reused when already finished from the
    study as it is now; a store made from another state of the study is an error, never reused)."""
    stage = f"capture:{label}"
    subject = view.subject(label)
    identity = capture_identity(view, subject)
    folder = run.path(f"{label}/store")
    stored = (folder / STORE_INFO).is_file()
    if stored:
        check_identity(ActivationStore.open(folder), identity, label)
    if stored and run.stage_done(stage):
        _log(f"capture {label}: finished earlier, reused")
        clock.lap(f"{label}: reused")
        return run.stages()[stage]
    handle = subject_handle(view, subject, config.remote)
    pairs = prompt_pairs(view, subject, handle)
    prompts = capture_prompts(handle, pairs)
    spec = CaptureSpec(places=tuple(map(str, all_places(handle, config.place_kinds))), positions=config.positions,
                       dtype=config.dtype, batch_size=config.batch_size, shard_records=config.shard_records,
                       prefix_reuse=config.prefix_reuse)
    _log(f"capture {label}: {len(prompts)} prompts ({sum(c.record['kind'] == 'object' for c in prompts)} object-level) on {handle.name}")
    store = capture(handle, prompts, spec, folder, extra_info={"study": view.name, "subject": label, "identity": identity},
                    nnsight=engine_of(handle, config.engine, config.remote))
    clock.lap(f"{label}: load, capture")
    _log(f"logit lens {label}")
    table, lens = run_lens(handle, run, subject, store, config.top_k)
    n_views = write_explorer(handle, run, label, store, table, prompts, config.explorer_items, config.batch_size)
    result = {"n_records": len(store.records), "lens": lens, "explorer_items": n_views}
    run.mark_done(stage, result)
    clock.lap(f"{label}: logit lens, explorer views")
    return result


def main_capture(config: CaptureConfig, preset: str) -> dict:
    check_engine(config.engine, config.remote, config.subjects)
    unknown = [s for s in config.subjects if s not in SUBJECTS]
    if unknown:
        raise UserError(f"unknown subject(s) {', '.join(unknown)}", f"use some of: {', '.join(SUBJECTS)}")
    view = open_study(preset, config)
    run = RunDir.create(runs_dir(), config.name or f"mech-{view.name}", cfg.to_dict(resolved(config, view)), seed=config.seed)
    clock = StageClock(run.folder)
    results = {label: capture_subject(view, run, label, config, clock) for label in config.subjects}
    run.write_json("capture.json", results)
    write_lens_report(run, config.subjects)
    clock.lap("logit lens report")
    clock.close()
    print(f"\nstores: {', '.join(str(run.path(s + '/store')) for s in config.subjects)}\nexplore: introspect-mi explore {run.folder}")
    return results


def write_lens_report(run: RunDir, subjects: Sequence[str]) -> None:
    """logit_lens/report.html from the saved lens summaries."""
    summaries = {s: run.read_table(f"{s}/logit_lens_summary") for s in subjects}
    lines = []
    for label, summary in summaries.items():
        answer, prop = first_rise(summary, "answer"), first_rise(summary, "property")
        lines.append(f"{label}: the object answer's first token first reaches a median rank within the top 10 at layer {answer}; "
                     f"the correct property token at layer {prop} (None: never).")
    text = ("At the hypothetical prompt's final token, each layer's resid_post read through the final norm and "
            "unembedding. Self-simulation predicts the object answer's token (e.g. 'dolphin') rises before the "
            "property token (e.g. 'd').\n\n" + "\n".join(lines))
    tables = [Table(s, caption=label) for label, s in summaries.items()]
    write_report(run.path("logit_lens/report.html"), "Logit lens: answer vs property token",
                 [Section("Median rank per layer", figures=[lens_rank_figure(summaries)], tables=tables, text=text)])
    for line in lines:
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    return config_main(argv, prog="python -m experiments.capture", doc=__doc__, config=CaptureConfig, section="capture", run=main_capture)


if __name__ == "__main__":
    sys.exit(main())
