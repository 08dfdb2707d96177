"""`netad score` wiring: replay captures (or Zeek conn.logs) as fast as possible through the daemon's stages.

`-` for the incidents or the scores means standard output (ECS or window-score JSON lines),
so that a replay pipes into jq; the logs are on stderr (detector.logging). Once standard
output's reader closes it (`| head -1`), scoring stops, as any Unix filter does, and the
command exits 1 with nothing more said (click's way with EPIPE, the same for either output).
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

from detector.alerting.sinks import SinkSet, build_sink
from detector.config import Config
from detector.model.bundle import ModelBundle
from detector.model.scorer import set_torch_threads
from detector.progress import Progress
from detector.service.pipeline import Pipeline, input_batches
from detector.service.scoring import ScoresFile, check_device

STDOUT = "-"  # an output path that means standard output


def score_captures(
    cfg: Config,
    pcaps: list[Path],
    model_dir: str | Path | None = None,
    scores: str | Path | None = None,
    incidents: str | Path | None = None,
    sinks: list[str] | None = None,
    flow_records: bool = False,
    damage: dict[str, str] | None = None,
) -> dict[str, int]:
    """Score `pcaps`: capture files, or Zeek conn.logs when `flow_records`; captures cut
    short by damage are scored up to it and named in `damage` (path -> what and where)."""
    check_device(cfg.model.device)  # before a sink opens its file
    set_torch_threads(cfg.model.threads)
    bundle = ModelBundle.load(model_dir or cfg.model.path)
    urls = list(sinks or [])
    if incidents is not None and str(incidents) == STDOUT:
        urls.insert(0, "stdout://?format=ecs")
    elif incidents is not None:
        Path(incidents).parent.mkdir(parents=True, exist_ok=True)
        Path(incidents).unlink(missing_ok=True)
        urls.insert(0, f"jsonl://{Path(incidents).resolve()}")
    sink_set = SinkSet([build_sink(u, spool_dir=None) for u in urls])
    scores_out = None
    if scores is not None and str(scores) == STDOUT:
        scores_out = sys.stdout
    elif scores is not None:
        scores_out = ScoresFile(scores, append=False)
    bar = Progress("score", unit="flow records" if flow_records else "packets")  # on a terminal only (stderr)
    try:
        pipeline = Pipeline(cfg, bundle, sinks=[sink_set], scores_out=scores_out, flow_records=flow_records,
                            origin=", ".join(str(p) for p in pcaps))
        for batch in input_batches(pcaps, flow_records, cfg.source.batch_packets, damage):
            pipeline.push(batch)
            bar.update(len(batch))
            if any(sink.reader_gone for sink in sink_set):  # `--incidents - | head -1` has what it asked for
                raise BrokenPipeError(errno.EPIPE, "standard output's reader closed it")
        pipeline.finish()
    finally:
        bar.close()
        sink_set.flush(timeout_s=30.0)
        sink_set.close(timeout_s=5.0)
        if scores_out is sys.stdout:
            scores_out.flush()
        elif scores_out is not None:
            scores_out.close()
    return pipeline.stats()
