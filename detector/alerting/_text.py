"""Text hygiene for the formats: what every value from the network goes through first.

Where it stands: under formats.py (the alerting stage's encoders). Values that come off the
wire (entities, peers, flows) or from files an operator edits (rule names) may hold anything:
control characters, bytes that were not UTF-8 (decoded with surrogateescape), megabytes of
text, NaN. These helpers turn them into clean, bounded text and JSON-safe values; each format
then escapes what its own syntax needs.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

MAX_VALUE_CHARS = 256  # one entity, peer, feature name or rule field
MAX_LIST_ITEMS = 10  # features, peers, ports, flows per event
_MAX_DEPTH = 4  # nesting allowed inside evidence dicts

# C0 controls but tab/LF/CR, DEL and C1 controls, Unicode line/paragraph separators (some
# line splitters break on them), bidi overrides (they make a UI lie about a value), and lone
# surrogates (non-UTF-8 bytes decoded with surrogateescape; they cannot be encoded).
_BAD_CHARS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NEWLINES = re.compile("[\t\r\n]")


def clean_text(value: object, max_chars: int = MAX_VALUE_CHARS) -> str:
    """A value as safe text: valid Unicode, no controls but tab/CR/LF, at most max_chars."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else str(value)
    text = _BAD_CHARS.sub("\ufffd", text)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "\u2026"
    return text


def one_line(value: object, max_chars: int = MAX_VALUE_CHARS) -> str:
    """clean_text with tab/CR/LF as spaces: for fields that have no escape for them."""
    return _NEWLINES.sub(" ", clean_text(value, max_chars))


def finite(value: Any, ndigits: int) -> float | None:
    """A finite rounded float, or None (JSON has no NaN or infinity; nor has anything float()
    refuses)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return round(number, ndigits) if math.isfinite(number) else None


def integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if math.isfinite(number) else None


def clean_json(value: Any, depth: int = 0) -> Any:
    """Evidence values as JSON-safe data: clean strings, finite numbers, bounded nesting."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):  # beyond 64 bits, many JSON parsers lose or refuse it
        return value if -(2**63) <= value < 2**64 else clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        return clean_json(value.tolist(), depth)
    if depth >= _MAX_DEPTH:
        return clean_text(value)
    if isinstance(value, dict):
        items = list(value.items())[: 4 * MAX_LIST_ITEMS]
        return {clean_text(k, 64): clean_json(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [clean_json(v, depth + 1) for v in list(value)[:MAX_LIST_ITEMS]]
    return clean_text(value)


def as_ip(value: object) -> str | None:
    """The value as a canonical IP address, or None: ECS ip fields reject anything else."""
    # A scope ("fe80::1%eth0") is not part of an address that ECS or OCSF accept.
    if not isinstance(value, str) or "%" in value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None
