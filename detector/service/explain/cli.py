"""`netad explain ID`: an incident's explanation on the terminal and its timeline as a PNG,
from a stopped (or running) daemon's files.

Where the records come from, richest first: the state directory (`--state-dir`, or the
config's `state_dir` with `-c`): the incident book and score history the daemon's board saved
(explanation.STATE_SUBDIR); a sink's ECS JSON lines (`--incidents`, or the config's first
jsonl sink); a window-scores file for the timeline (`--scores`, or the config's
`outputs.scores`). Imports no torch, numba or scipy: it answers at once.
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path

import click

from detector._exit import EX_NOINPUT, errors_to_exit_codes
from detector.service.explain.book import Entry, IncidentBook
from detector.service.explain.explanation import BOOK_FILE, HISTORY_FILE, STATE_SUBDIR, Explanation, load_book, series_from_scores
from detector.service.explain.history import ScoreHistory, Series
from detector.service.explain.text import render_text, term
from detector.service.explain.timeline import timeline_png


def _config_files(config: str) -> tuple[Path, Path | None, Path | None, float]:
    """(state dir, the first jsonl sink's file, outputs.scores, bin_s) of a config."""
    from detector.config import load_config

    cfg = load_config(config)
    jsonl = None
    for sink in cfg.sinks:
        parts = urllib.parse.urlsplit(sink.url)
        if parts.scheme == "jsonl" and parts.path:
            jsonl = Path(urllib.parse.unquote(parts.path))
            break
    return cfg.state_dir, jsonl, cfg.outputs.scores, cfg.windows.bin_s


def _fail(message: str, code: int) -> None:
    click.echo(f"netad: {message}", err=True)
    sys.exit(code)


@click.command("explain")
@click.argument("incident_id")
@click.option("-c", "--config", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The daemon's config: its state_dir, jsonl sink and outputs.scores are read.")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None, help="The daemon's state directory.")
@click.option("--incidents", "incidents_file", type=click.Path(dir_okay=False), default=None,
              help="Incident events as a jsonl sink wrote them (ECS JSON lines).")
@click.option("--scores", "scores_file", type=click.Path(dir_okay=False), default=None,
              help="Window scores (JSON lines, outputs.scores) to draw the timeline from.")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Where to write the timeline (default: netad-incident-ID.png here).")
@errors_to_exit_codes
def explain(incident_id: str, config: str | None, state_dir: str | None, incidents_file: str | None, scores_file: str | None,
            png: str | None) -> None:
    """Explain an incident: what its entity did, how unusual that is for it, and the flows behind it; writes its timeline PNG.

    ID is an incident id (netad.incident_id), or the start of one. Works on a stopped
    daemon's files: its state directory, the incident events a jsonl sink wrote, the window
    scores it wrote."""
    state: Path | None = Path(state_dir) if state_dir else None
    events: Path | None = Path(incidents_file) if incidents_file else None
    scores: Path | None = Path(scores_file) if scores_file else None
    bin_s = 0.0
    if config:
        c_state, c_events, c_scores, bin_s = _config_files(config)
        state = state or (c_state if c_state.is_dir() else None)
        events = events or (c_events if c_events is not None and c_events.exists() else None)
        scores = scores or (c_scores if c_scores is not None and c_scores.exists() else None)
    if state is None and events is None:
        if config:  # it said where: the daemon it names has written nothing there yet
            looked = [f"state_dir {c_state}"] + ([f"jsonl sink {c_events}"] if c_events is not None else [])
            _fail(f"{config}: no incidents to explain: {' and '.join(looked)} "
                  f"{'are' if len(looked) > 1 else 'is'} not there (has the daemon run with this config?)", EX_NOINPUT)
        raise click.UsageError("say where the incidents are: --state-dir DIR, --incidents FILE or -c CONFIG")
    entry, history = _find(incident_id, state, events)
    if entry is None:
        _fail(f"no incident {term(incident_id)!r} (or more than one starting so) in "
              + " and ".join(str(p) for p in (state, events) if p is not None), 1)
        return
    series = Series.empty()
    if history is not None:
        series = history.series(entry.scope, entry.entity)
        bin_s = history.bin_s or bin_s
    if not len(series) and scores is not None:
        try:
            with scores.open(encoding="utf-8", errors="replace") as f:
                series = series_from_scores(f, entry.scope, entry.entity)
        except OSError as exc:
            _fail(f"{scores}: cannot read: {exc.strerror or exc}", EX_NOINPUT)
    x = Explanation(entry, series, bin_s)
    out = Path(png) if png else Path(f"netad-incident-{_safe(entry.incident_id)[:8]}.png")
    image = timeline_png(series, entry.entity, x.start_s, x.end_s, x.peak,
                         title=f"{entry.entity}: window scores against the threshold ({entry.category or 'anomaly'})")
    try:
        out.write_bytes(image)
    except OSError as exc:
        _fail(f"{out}: cannot write the timeline: {exc.strerror or exc}", 73)  # EX_CANTCREAT
    click.echo(render_text(x, str(out)), nl=False)


def _find(incident_id: str, state: Path | None, events: Path | None) -> tuple[Entry | None, ScoreHistory | None]:
    """The incident's entry (the state directory's, else the events file's) and the saved history."""
    entry, history = None, None
    if state is not None:
        directory = state / STATE_SUBDIR
        if not state.is_dir():
            _fail(f"{state}: no such state directory", EX_NOINPUT)
        book_path = directory / BOOK_FILE
        if book_path.exists():
            entry = _read(book_path).find(incident_id)
        if (directory / HISTORY_FILE).exists():
            try:
                history = ScoreHistory.from_file(directory / HISTORY_FILE)
            except (OSError, ValueError, KeyError) as exc:
                click.echo(f"netad: {directory / HISTORY_FILE}: not used: {exc}", err=True)
    if entry is None and events is not None:
        if not events.exists():
            _fail(f"{events}: no such file", EX_NOINPUT)
        entry = _read(events).find(incident_id)
    return entry, history


def _read(path: Path) -> IncidentBook:
    try:
        return load_book(path)
    except OSError as exc:
        _fail(f"{path}: cannot read: {exc.strerror or exc}", EX_NOINPUT)
        raise  # not reached


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "incident"
