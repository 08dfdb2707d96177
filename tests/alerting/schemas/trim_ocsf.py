"""Cut a compiled OCSF schema down to one class and the objects it reaches (how
ocsf-1.1.0/detection_finding.json was made; see README.md for the whole recipe).

    python trim_ocsf.py COMPILED.json OCSF_SOURCE_DIR detection_finding > ocsf-1.1.0/detection_finding.json

COMPILED.json is `python -m ocsf.compile OCSF_SOURCE_DIR --ignore-extension linux windows`
(ocsf-lib 0.10.4) at the schema's release tag. Kept per attribute: what a validator needs
(type, is_array, requirement, enum ids and captions, sibling, profile); descriptions are
dropped. Constraints (at_least_one / just_one) are taken from the source files instead of
the compiler: ocsf-lib 0.10.4 keeps the root object's (_entity: name or uid) where the
ocsf-server takes the nearest one in the `extends` chain (endpoint: ip, uid, name, ...).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

_ATTRIBUTE_KEYS = ("type", "is_array", "requirement", "sibling", "profile")


def _attribute(attr: dict[str, Any]) -> dict[str, Any]:
    out = {k: attr[k] for k in _ATTRIBUTE_KEYS if attr.get(k) not in (None, False)}
    if attr.get("enum"):
        out["enum"] = {uid: item.get("caption") for uid, item in attr["enum"].items()}
    return out


def _source_constraints(source: Path) -> dict[str, dict[str, Any]]:
    """name -> constraints, the nearest definition along `extends` (the ocsf-server's rule)."""
    files: dict[str, dict[str, Any]] = {}
    for path in [*source.glob("objects/*.json"), *source.glob("events/**/*.json")]:
        data = json.loads(path.read_text())
        files[data["name"]] = data
    out = {}
    for name, data in files.items():
        seen = data
        while "constraints" not in seen and seen.get("extends") in files:
            seen = files[seen["extends"]]
        if seen.get("constraints"):
            out[name] = seen["constraints"]
    return out


def _entry(entry: dict[str, Any], constraints: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"attributes": {k: _attribute(v) for k, v in sorted(entry["attributes"].items())}}
    if constraints:
        out["constraints"] = constraints
    return out


def trim(compiled: dict[str, Any], source: Path, class_name: str) -> dict[str, Any]:
    """The class, every object its attributes reach (transitively), the types, the categories."""
    constraints = _source_constraints(source)
    cls = compiled["classes"][class_name]
    reached: set[str] = set()
    pending = [cls]
    while pending:
        for attr in pending.pop()["attributes"].values():
            kind = attr["type"]
            if kind in compiled["objects"] and kind not in reached:
                reached.add(kind)
                pending.append(compiled["objects"][kind])
    types = {
        name: {k: v for k, v in t.items() if k in ("type", "regex", "range", "max_len", "values") and v is not None}
        for name, t in compiled["types"].items()
    }
    klass = _entry(cls, constraints.get(class_name))
    klass.update(uid=cls["uid"], category=cls["category"], profiles=cls.get("profiles", []))
    return {
        "version": compiled["version"],
        "class": {class_name: klass},
        "objects": {name: _entry(compiled["objects"][name], constraints.get(name)) for name in sorted(reached)},
        "types": types,
        "categories": {k: {"uid": v["uid"], "caption": v["caption"]} for k, v in compiled["categories"].items()},
    }


if __name__ == "__main__":
    compiled_path, source_dir, name = sys.argv[1:4]
    trimmed = trim(json.loads(Path(compiled_path).read_text()), Path(source_dir), name)
    json.dump(trimmed, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
