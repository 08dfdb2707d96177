"""Ground-truth intervals (the CSV format of ../shared/data/westermo/ground_truth_intervals.csv).

Columns: event, is_attack_or_fault, start_offset_s, end_offset_s, start_epoch_pcap,
end_epoch_pcap, description. The epoch columns are authoritative (capture clock).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from detector.errors import ConfigError

COLUMNS = ["event", "is_attack_or_fault", "start_offset_s", "end_offset_s", "start_epoch_pcap", "end_epoch_pcap", "description"]


@dataclass(frozen=True)
class Interval:
    event: str
    positive: bool
    start_ns: int
    end_ns: int
    description: str


def load_truth(path: str | Path) -> list[Interval]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{path}:1: missing columns {missing}")
            out = []
            for row in reader:
                try:
                    out.append(
                        Interval(
                            event=row["event"],
                            positive=int(row["is_attack_or_fault"]) == 1,
                            start_ns=int(round(float(row["start_epoch_pcap"]) * 1e9)),
                            end_ns=int(round(float(row["end_epoch_pcap"]) * 1e9)),
                            description=row["description"],
                        )
                    )
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{path}:{reader.line_num}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return out
