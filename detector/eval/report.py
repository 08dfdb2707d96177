"""The evaluation report: DIR/report.png (timelines and ROC curves) and DIR/report.md.

Where it stands: the very end of `netad eval`, after the metrics. It only draws and formats
what `eval.evaluate` computed; it recomputes nothing but the ROC curves it plots. The figure
is drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch, no
display or GUI toolkit needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.eval import metrics as M
from detector.files import naming

if TYPE_CHECKING:
    from detector.contracts import IncidentEvent
    from detector.eval.samples import LabelledInterval, Windows

_COLORS = {"lstm": "#1f77b4", "stateless_ae": "#ff7f0e", "reset_hc": "#9467bd", "zscore": "#2ca02c", "lstm_window": "#8c564b"}
_NAMES = {"lstm": "LSTM-AE, carried state, accumulated", "stateless_ae": "same AE, no memory (state reset, no peer history)",
          "reset_hc": "same AE, (h, c) reset, peer history kept", "zscore": "robust z-score (max |z|)",
          "lstm_window": "LSTM-AE, the window's own score (nothing accumulated)"}


def write_report(out: Path, result: dict, w: Windows, intervals: list[LabelledInterval], incidents: list[IncidentEvent]) -> None:
    _plot(out / "report.png", result, w, intervals, incidents)
    with naming(out / "report.md"):
        (out / "report.md").write_text(markdown(result), encoding="utf-8")


# --------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------


def _plot(path: Path, result: dict, w: Windows, intervals: list[LabelledInterval], incidents: list[IncidentEvent]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    host = result.get("most_relevant_host")
    t0 = int(w.start_ns.min())
    fig = Figure(figsize=(15, 9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    _timeline(axes[0, 0], w, "global", "global", intervals, incidents, t0)
    if host is not None:
        _timeline(axes[1, 0], w, host, "host", intervals, incidents, t0)
    else:
        axes[1, 0].set_axis_off()
    for ax, cls in ((axes[0, 1], "global"), (axes[1, 1], "host")):
        _roc(ax, w, cls, result[cls])
    fig.suptitle(f"netad eval: {', '.join(Path(p).name for p in result['inputs']['pcaps'])} - {result['split']['description']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _timeline(ax, w: Windows, entity: str, cls: str, intervals, incidents, t0: int) -> None:
    rows = np.flatnonzero((w.entity == entity) & (w.entity_class == cls))
    hours = lambda ns: (np.asarray(ns, dtype=np.float64) - t0) / 3.6e12  # noqa: E731
    x = hours(w.end_ns[rows])
    score = np.maximum(w.scores["lstm"][rows], 1e-4)
    ax.plot(x, score, lw=0.7, color=_COLORS["lstm"], label="LSTM score (window end)")
    if rows.size:
        thr = w.threshold[rows]
        ax.plot(x, thr, color="k", ls="--", lw=0.8, label=f"threshold ({thr.min():.3g}..{thr.max():.3g})")
    lo, hi = hours(w.start_ns.min()), hours(w.end_ns.max())
    min_width = (hi - lo) / 400  # a short attack still shows on a day-long axis
    shown = set()
    for li in intervals:
        a, b = hours(li.interval.start_ns), hours(li.interval.end_ns)
        if b < lo or a > hi:
            continue
        involved = cls == "global" or entity in li.hosts
        positive = li.interval.positive
        color = "red" if positive and involved else ("orange" if positive else "green")
        label = {"red": "attack/fault (involves it)", "orange": "attack/fault (other hosts)", "green": "normal interval"}[color]
        ax.axvspan(a, max(b, a + min_width), color=color, alpha=0.25, lw=0, label=None if label in shown else label)
        shown.add(label)
    mine = [e for e in incidents if e.entity == entity]
    if mine:  # markers along the top edge: x in hours, y in axes coordinates
        xs = hours([e.first_seen_ns for e in mine])
        ax.plot(xs, np.full(xs.shape, 0.97), "v", color="crimson", ms=6, transform=ax.get_xaxis_transform(),
                label=f"incident opened ({len(mine)})")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("hours since the start of the test part")
    ax.set_ylabel("reconstruction error (scaled)")
    ax.set_title(f"{entity} ({cls}): LSTM-AE score per window", fontsize=10, pad=24)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=7, ncol=5, frameon=False, borderaxespad=0.1)


def _roc(ax, w: Windows, cls: str, m: dict) -> None:
    rows = (w.entity_class == cls) & ~w.unlabelled
    y = w.label[rows]
    drawn = False
    for det in ("zscore", "reset_hc", "stateless_ae", "lstm_window", "lstm"):  # the LSTM last: on top where curves coincide
        s = w.scores[det][rows]
        if not s.size or not np.all(np.isfinite(s)):
            continue
        curve = M.roc_curve(s, y)
        if curve is None:
            continue
        auc = m["detectors"][det]["roc_auc"]
        # log FPR axis: the targets live at 1e-3..1e-2; FPR 0 is drawn at half a negative
        fpr = np.maximum(curve.fpr, floor := 0.5 / curve.negatives)
        ax.step(fpr, curve.tpr, where="post", color=_COLORS[det], lw=1.6 if det == "lstm" else 1.2, label=f"{_NAMES[det]}: AUC {auc:.3f}")
        ax.set_xlim(floor, 1.0)
        drawn = True
    for x in (1e-3, 1e-2):
        ax.axvline(x, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false-positive rate (windows, log; FPR 0 drawn at 0.5/negatives)")
    ax.set_ylabel("true-positive rate")
    ax.set_title(f"ROC, {cls} windows ({m['positives']} positive, {m['negatives']} negative)", fontsize=10)
    if drawn:
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no positive or no negative windows", ha="center", va="center", transform=ax.transAxes)


# --------------------------------------------------------------------------------------
# The Markdown summary
# --------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _difference(d: dict | None) -> str:
    if d is None:
        return "n/a"
    if d["ci95_low"] is None:
        n = d["positive_clusters"]
        return f"{d['difference']:+.3f} (no interval from {n} attack{'' if n == 1 else 's'})"
    return f"{d['difference']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]"


def markdown(result: dict) -> str:
    lines = [
        "# netad evaluation",
        "",
        f"- captures: {', '.join(result['inputs']['pcaps'])}",
        f"- truth: {result['inputs']['truth'] or 'none (all benign)'}",
        f"- split: {result['split']['description']}; test {result['split']['test_start']} .. {result['split']['test_end']}"
        f" ({result['test']['hours']:.2f} h, {result['test']['benign_hours']:.2f} h benign)",
        f"- model: {result['model']['version']}"
        f" ({'trained here in ' + str(result['model']['training_s']) + ' s' if result['model']['trained_here'] else 'given'}),"
        f" windows {result['model']['bins']} x {result['model']['bin_s']:g} s, thresholds "
        + ", ".join(f"{k} {v:.4g} ({result['model']['threshold_methods'][k]}, runs add up above "
                    f"{result['model'].get('allowances', {}).get(k, 0.5):g} of it)" for k, v in result["model"]["thresholds"].items()),
        "",
        "## Window-level detection",
        "",
        "| entity | detector | ROC AUC | PR AUC | TPR @ FPR 1e-3 | TPR @ FPR 1e-2 | positives | negatives |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cls in ("global", "host"):
        for det, m in result[cls]["detectors"].items():
            if m is None:
                lines.append(f"| {cls} | {det} | n/a | n/a | n/a | n/a | | |")
                continue
            t = m["tpr_at_fpr"]
            lines.append(f"| {cls} | {det} | {_f(m['roc_auc'])} | {_f(m['pr_auc'])} | {_f(t['0.001'])} | {_f(t['0.01'])}"
                         f" | {m['positives']} | {m['negatives']} |")
    lines += ["", "At the calibrated threshold (LSTM): " + "; ".join(
        f"{cls} TPR {_f(result[cls]['at_threshold']['tpr'])}, FPR {_f(result[cls]['at_threshold']['fpr'], 4)}" for cls in ("global", "host")),
        "", "Left out as neither positive nor negative (the *trail*): windows after a positive interval in which"
        " the entity still carries a history level out of it: " + ", ".join(
            f"{cls} {result[cls].get('trail', 0)}" for cls in ("global", "host")) + ".",
        "", "## Per event class", "",
        "Positives: the class's windows (hosts: its attackers and targets); negatives: benign windows."
        " *visible*: only the intervals in which the capture holds the attack's packets (hosts: only"
        " the named hosts that hold them).", "",
        "| entity | class | intervals (visible) | positives all / visible | LSTM recall all / visible"
        " | ROC AUC all: LSTM / stateless / (h, c) reset / z / window alone | ROC AUC visible: LSTM / stateless / (h, c) reset / z / window alone |",
        "|---|---|---|---|---|---|---|"]
    for cls in ("global", "host"):
        for event, c in result[cls]["classes"].items():
            a, v = c["all"], c["visible"]
            aucs = lambda d: " / ".join(_f(d["roc_auc"].get(k)) for k in ("lstm", "stateless_ae", "reset_hc", "zscore", "lstm_window"))  # noqa: E731
            lines.append(f"| {cls} | {event} | {a['intervals']} ({v['intervals']}) | {a['positives']} / {v['positives']} | "
                         f"{_f(a['recall'])} / {_f(v['recall'])} | {aucs(a)} | {aucs(v)} |")
    lines += ["", "## What the carried state is worth", "",
              "LSTM ROC AUC minus each baseline's on the same windows, with a 95% interval from a paired"
              " cluster bootstrap (attack intervals and moments drawn whole, the attacks within their kind, Rao and Wu's"
              " rescaling): an interval that holds 0 is a tie; fewer than 5 attack intervals give no interval.", "",
              "*stateless*: the same network with no memory at all (neutral (h, c) every window, no peer history);"
              " *(h, c) reset*: the neutral (h, c) every window, the peer history kept;"
              " *window alone*: the LSTM's score of the window without what the entity's previous window carried in.", "",
              "| entity | positives | clusters (attack / benign) | LSTM - stateless | LSTM - (h, c) reset | LSTM - z-score"
              " | LSTM - window alone |",
              "|---|---|---|---|---|---|---|"]
    for cls in ("global", "host"):
        rows = [("all attack windows", result[cls]["lstm_minus"]), ("visible windows, all classes", result[cls]["lstm_minus_visible"])]
        rows += [(f"{event}, visible", c["visible"]["lstm_minus"]) for event, c in result[cls]["classes"].items()]
        for name, d in rows:
            first = next((v for v in d.values() if v), None)
            if first is None:
                continue
            lines.append(f"| {cls} | {name} | {first['positive_clusters']} / {first['negative_clusters']} | "
                         f"{_difference(d['stateless_ae'])} | {_difference(d.get('reset_hc'))} | {_difference(d['zscore'])} | "
                         f"{_difference(d.get('lstm_window'))} |")
    lines += ["", "## Detection delay per interval (LSTM, first anomalous window)", "",
              "| event | start | visible | global: delay s (windows after start) | hosts: delay s (windows after start) |",
              "|---|---|---|---|---|"]
    for g, h in zip(result["global"]["detection"], result["host"]["detection"], strict=True):
        cell = lambda d: f"{d['delay_s']:.1f} ({d['windows_after_start']})" if d["detected"] else "missed"  # noqa: E731
        lines.append(f"| {g['event']} | {g['start']} | {g['visible']} | {cell(g)} | {cell(h) if h['hosts'] else 'no hosts named'} |")
    lines += ["", "## False alarms on benign test spans", "",
              "| entity | incidents opened | on benign spans | per hour | per day |", "|---|---|---|---|---|"]
    for cls in ("global", "host"):
        i = result[cls]["incidents"]
        lines.append(f"| {cls} | {i['opened']} | {i['benign']} | {_f(i['per_hour'], 4)} | {_f(i['per_day'], 2)} |")
    lines.append("")
    return "\n".join(lines)
