"""An incident's timeline as a PNG: the entity's window scores against its threshold, the
incident shaded. Drawn on the server (matplotlib's Agg canvas, no pyplot state), so the page
needs no JavaScript and nothing from outside: it works air-gapped. Used by the incident page
(board.py) and `netad explain` (cli.py).
"""

from __future__ import annotations

import datetime as dt
import io
import re
import threading

import numpy as np

from detector.service.explain.history import ANOMALOUS, Series

_DRAWING = threading.Lock()  # one drawing at a time: matplotlib's font cache is shared, and the daemon's cores are busy
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def plain(text: object, max_chars: int = 80) -> str:
    """Text for a figure: no control characters, no mathtext (`$`), cut to max_chars."""
    out = _UNSAFE.sub("\ufffd", str(text)).replace("$", r"\$")
    return out if len(out) <= max_chars else out[: max_chars - 1] + "\u2026"


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(seconds), tz=dt.UTC)


def timeline_png(series: Series, entity: str, incident_start_s: float | None, incident_end_s: float | None,
                 peak: tuple[float, float, float] | None = None, title: str = "") -> bytes:
    """The timeline (module text). `peak` = (time s, score, threshold): drawn when the history
    has no rows (a file of incident events is all there is)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, DateFormatter, date2num
    from matplotlib.figure import Figure

    with _DRAWING:
        fig = Figure(figsize=(9.6, 3.4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        times = np.asarray(date2num([_utc(s) for s in series.end_s.tolist()]), np.float64)
        score = np.asarray(series.score, np.float64)
        threshold = np.asarray(series.threshold, np.float64)
        if incident_start_s is not None and incident_end_s is not None:
            ax.axvspan(float(date2num(_utc(incident_start_s))), float(date2num(_utc(max(incident_end_s, incident_start_s + 1)))),
                       color="tab:orange", alpha=0.25, lw=0, label="incident")
        if len(series):
            ax.plot(times, score, color="tab:blue", lw=1.3, label="score, with what earlier windows carried in")
            ax.step(times, threshold, where="post", color="tab:red", ls="--", lw=1.1, label="threshold")
            hot = (np.asarray(series.flags) & ANOMALOUS) != 0
            if hot.any():
                ax.scatter(times[hot], score[hot], color="tab:red", s=14, zorder=3, label="anomalous window")
            values = np.concatenate([score, threshold])
        elif peak is not None:
            ax.scatter([float(date2num(_utc(peak[0])))], [peak[1]], color="tab:red", s=20, zorder=3, label="peak score")
            ax.axhline(peak[2], color="tab:red", ls="--", lw=1.1, label="threshold")
            values = np.array([peak[1], peak[2]], np.float64)
        else:
            values = np.zeros(0)
        positive = values[np.isfinite(values) & (values > 0)]
        if positive.size and positive.max() / positive.min() > 50:
            ax.set_yscale("log")  # a flood's score is thousands of times its threshold
        ax.xaxis_date(tz=dt.UTC)
        ax.xaxis.set_major_locator(AutoDateLocator(tz=dt.UTC))
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=dt.UTC))
        ax.set_xlabel("window end (UTC)")
        ax.set_ylabel("score")
        ax.set_title(plain(title or f"{entity}: window scores against the threshold", 100), fontsize=11)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8, framealpha=0.8)
        if not len(series) and peak is None:
            ax.text(0.5, 0.5, "no window scores kept for this entity", transform=ax.transAxes, ha="center", va="center")
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png")
        return out.getvalue()
