"""Strict validators of netad's ECS and OCSF events against the published schemas vendored in
tests/alerting/schemas/ (where each came from: its README.md).

Both return a list of errors, each naming the field; an empty list is a valid event. They
are stricter than a SIEM's ingest (which keeps what it does not know): a field the schema
does not define is an error, except under the custom namespaces ECS users are told to use
and OCSF's `unmapped` object.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"
ECS_VERSION = "8.11.0"
OCSF_VERSION = "1.1.0"

# --------------------------------------------------------------------------------------
# ECS: every leaf is a field of ecs_flat.yml with a value of its type, or sits under a
# custom namespace (ECS's advice for custom fields: a top-level name of one's own that ECS
# does not use).
# --------------------------------------------------------------------------------------

_ECS_TEXT = {"keyword", "constant_keyword", "wildcard", "text", "match_only_text"}
_ECS_INTEGER = {"long", "integer", "short", "byte", "unsigned_long"}
_ECS_NUMBER = {"float", "double", "half_float", "scaled_float"}


@cache
def ecs_fields() -> dict[str, dict[str, Any]]:
    """ecs_flat.yml at ECS_VERSION: dotted field name -> its definition."""
    with open(SCHEMAS / f"ecs-{ECS_VERSION}" / "ecs_flat.yml", encoding="utf-8") as fh:
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def validate_ecs(doc: dict[str, Any], custom_namespaces: tuple[str, ...] = ("netad",)) -> list[str]:
    """Errors of one ECS document: unknown fields, wrong types, a list where ECS has one
    value (or one value where it normalizes to an array), values outside `allowed_values`,
    empty strings, and an `ecs.version` other than the vendored one."""
    fields = ecs_fields()
    top_level = {name.split(".")[0] for name in fields}
    errors: list[str] = []
    for namespace in custom_namespaces:
        if namespace in top_level:
            errors.append(f"{namespace}: custom namespace collides with an ECS field set")
    if doc.get("ecs", {}).get("version") != ECS_VERSION:
        errors.append(f"ecs.version: {doc.get('ecs', {}).get('version')!r}, the schema checked is {ECS_VERSION}")
    _ecs_walk(doc, "", fields, custom_namespaces, errors)
    return errors


def _ecs_walk(node: dict[str, Any], prefix: str, fields: dict[str, dict[str, Any]],
              custom: tuple[str, ...], errors: list[str]) -> None:
    for key, value in node.items():
        name = f"{prefix}{key}"
        if not prefix and key in custom:
            continue
        definition = fields.get(name)
        parent = fields.get(prefix[:-1]) if prefix else None
        if definition is None and isinstance(value, dict) and any(f.startswith(name + ".") for f in fields):
            _ecs_walk(value, name + ".", fields, custom, errors)  # a field set or object with fields of its own
            continue
        if definition is None and parent is not None and parent.get("object_type"):
            # an object field with free keys (labels: keyword values)
            definition = {"type": parent["object_type"], "normalize": []}
        if definition is None:
            errors.append(f"{name}: not an ECS {ECS_VERSION} field")
            continue
        if definition["type"] in ("object", "flattened", "nested"):
            if not isinstance(value, dict):
                errors.append(f"{name}: {definition['type']} field holds {type(value).__name__}")
            elif definition["type"] == "object":
                _ecs_walk(value, name + ".", fields, custom, errors)
            continue
        is_array = "array" in definition.get("normalize", [])
        if isinstance(value, list) != is_array:
            errors.append(f"{name}: {'a list' if isinstance(value, list) else 'one value'} where ECS has "
                          f"{'an array' if is_array else 'one value'}")
        for item in value if isinstance(value, list) else [value]:
            problem = _ecs_type_error(definition, item)
            if problem:
                errors.append(f"{name}: {problem}")


def _ecs_type_error(definition: dict[str, Any], value: Any) -> str | None:
    kind = definition["type"]
    if value is None:
        return "null (leave the field out)"
    if kind in _ECS_TEXT:
        if not isinstance(value, str):
            return f"{kind} holds {type(value).__name__}"
        if value == "":
            return "empty string (leave the field out)"
        allowed = [a["name"] for a in definition.get("allowed_values", [])]
        if allowed and value not in allowed:
            return f"{value!r} is not one of the allowed values {allowed}"
        return None
    if kind in _ECS_INTEGER:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"{kind} holds {value!r}"
    if kind in _ECS_NUMBER:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else f"{kind} holds {value!r}"
    if kind == "boolean":
        return None if isinstance(value, bool) else f"boolean holds {value!r}"
    if kind == "ip":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"not an IP address: {value!r}"
        return None
    if kind == "date":
        try:
            dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return f"not an ISO 8601 date: {value!r}"
        return None
    return f"type {kind} is not checked by this validator"


# --------------------------------------------------------------------------------------
# OCSF: the compiled Detection Finding class and the objects it reaches.
# --------------------------------------------------------------------------------------


@cache
def ocsf_schema() -> dict[str, Any]:
    return json.loads((SCHEMAS / f"ocsf-{OCSF_VERSION}" / "detection_finding.json").read_text(encoding="utf-8"))


def validate_ocsf(doc: dict[str, Any]) -> list[str]:
    """Errors of one OCSF Detection Finding: unknown attributes, attributes of a profile
    the event does not declare in metadata.profiles, missing required attributes, wrong
    types (with the schema's ranges, lengths and patterns), enum values the schema does not
    list, an enum's sibling caption that does not match its id, unmet constraints (at least
    one of / just one of), and class, category and type ids that do not add up."""
    schema = ocsf_schema()
    (class_name, cls), = schema["class"].items()
    errors: list[str] = []
    if doc.get("class_uid") != cls["uid"]:
        errors.append(f"class_uid: {doc.get('class_uid')!r} is not {class_name}")
    if doc.get("category_uid") != schema["categories"][cls["category"]]["uid"]:
        errors.append(f"category_uid: {doc.get('category_uid')!r} is not {cls['category']}")
    if isinstance(doc.get("class_uid"), int) and doc.get("type_uid") != doc["class_uid"] * 100 + (doc.get("activity_id") or 0):
        errors.append(f"type_uid: {doc.get('type_uid')!r} is not class_uid * 100 + activity_id")
    if doc.get("metadata", {}).get("version") != schema["version"]:
        errors.append(f"metadata.version: {doc.get('metadata', {}).get('version')!r}, the schema checked is {schema['version']}")
    profiles = doc.get("metadata", {}).get("profiles") or []
    for profile in profiles:
        if profile not in cls["profiles"]:
            errors.append(f"metadata.profiles: {profile!r} is not a profile of {class_name}")
    _ocsf_object(doc, cls, "", set(profiles), schema, errors)
    return errors


def _ocsf_object(node: Any, entry: dict[str, Any], path: str, profiles: set[str], schema: dict[str, Any],
                 errors: list[str]) -> None:
    where = path.rstrip(".") or "<event>"
    if not isinstance(node, dict):
        errors.append(f"{where}: an object holds {type(node).__name__}")
        return
    attributes = entry["attributes"]
    for name, value in node.items():
        attr = attributes.get(name)
        if attr is None:
            errors.append(f"{path}{name}: not an attribute of this object in OCSF {schema['version']}")
        elif attr.get("profile") and attr["profile"] not in profiles:
            errors.append(f"{path}{name}: belongs to profile {attr['profile']!r}, not in metadata.profiles")
        elif attr.get("is_array") and not isinstance(value, list):
            errors.append(f"{path}{name}: one value where the schema has an array")
        elif not attr.get("is_array") and isinstance(value, list):
            errors.append(f"{path}{name}: an array where the schema has one value")
        else:
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                at = f"{path}{name}[{i}]" if isinstance(value, list) else f"{path}{name}"
                _ocsf_value(item, attr, at, profiles, schema, errors)
            _ocsf_sibling(node, name, attr, path, errors)
    for name, attr in attributes.items():
        if attr.get("requirement") == "required" and node.get(name) is None:
            if not attr.get("profile") or attr["profile"] in profiles:
                errors.append(f"{path}{name}: required, missing")
    for rule, names in entry.get("constraints", {}).items():
        present = [n for n in names if node.get(n) is not None]
        if rule == "at_least_one" and not present:
            errors.append(f"{where}: needs at least one of {names}")
        elif rule == "just_one" and len(present) != 1:
            errors.append(f"{where}: needs just one of {names}, has {present}")


def _ocsf_sibling(node: dict[str, Any], name: str, attr: dict[str, Any], path: str, errors: list[str]) -> None:
    """An enum id's sibling string is the id's caption, except for 99 (Other), whose string
    says what the source had."""
    sibling, enum, value = attr.get("sibling"), attr.get("enum"), node.get(name)
    if not sibling or not enum or value == 99 or sibling not in node:
        return
    caption = enum.get(str(value))
    if caption is not None and node[sibling] != caption:
        errors.append(f"{path}{sibling}: {node[sibling]!r} is not the caption of {name}={value} ({caption!r})")


def _ocsf_value(value: Any, attr: dict[str, Any], path: str, profiles: set[str], schema: dict[str, Any],
                errors: list[str]) -> None:
    kind = attr["type"]
    if value is None:
        errors.append(f"{path}: null (leave the attribute out)")
        return
    if kind == "object":  # OCSF's generic object (unmapped): any JSON object
        if not isinstance(value, dict):
            errors.append(f"{path}: an object holds {type(value).__name__}")
        return
    if kind in schema["objects"]:
        _ocsf_object(value, schema["objects"][kind], path + ".", profiles, schema, errors)
        return
    problem = _ocsf_scalar_error(value, kind, schema["types"])
    if problem:
        errors.append(f"{path}: {problem}")
    elif attr.get("enum") and str(value) not in attr["enum"]:
        errors.append(f"{path}: {value!r} is not in the enum {sorted(attr['enum'], key=int)}")


def _ocsf_scalar_error(value: Any, kind: str, types: dict[str, Any]) -> str | None:
    if kind not in types:
        return f"unknown type {kind}"
    definition = types[kind]
    base = definition.get("type")
    if base:
        problem = _ocsf_scalar_error(value, base, types)
        if problem:
            return f"{kind}: {problem}"
    elif kind == "string_t" and not isinstance(value, str):
        return f"string_t holds {type(value).__name__}"
    elif kind in ("integer_t", "long_t") and (not isinstance(value, int) or isinstance(value, bool)):
        return f"{kind} holds {value!r}"
    elif kind == "float_t" and (not isinstance(value, int | float) or isinstance(value, bool)):
        return f"float_t holds {value!r}"
    elif kind == "boolean_t" and not isinstance(value, bool):
        return f"boolean_t holds {value!r}"
    if "max_len" in definition and len(str(value)) > definition["max_len"]:
        return f"{kind}: longer than {definition['max_len']}"
    if "range" in definition and not definition["range"][0] <= value <= definition["range"][1]:
        return f"{kind}: {value!r} outside {definition['range']}"
    if "regex" in definition and not re.search(definition["regex"], str(value)):
        return f"{kind}: {value!r} does not match the type's pattern"
    if kind == "ip_t":  # the pattern is loose (unescaped dots); the value must parse too
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"ip_t: not an IP address: {value!r}"
    return None
