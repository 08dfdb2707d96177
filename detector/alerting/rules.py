"""Rules analysts control: allowlists, suppression windows, severity, categories and ATT&CK.

Rule files are YAML (rules/*.yaml), validated like the config: unknown keys are errors and
every error names the file and line. Rules are applied to anomalous window scores before
they reach the incident lifecycle; a rule that drops a window raises `Dropped` (structlog's
DropEvent idea) with the rule's name, so the caller can count why windows were dropped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import zoneinfo
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from detector.alerting import attack
from detector.alerting.classify import CATEGORIES, Classification, Role, classify
from detector.config import read_yaml, validate_yaml_data
from detector.contracts import WindowScore
from detector.errors import ConfigError

Severity = Literal["low", "medium", "high", "critical"]
SEVERITY_SCORE = {"low": 25, "medium": 50, "high": 75, "critical": 95}


class Dropped(Exception):
    """An anomalous window was dropped by a rule (allowlist or suppression)."""

    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Match(_Strict):
    """What a rule applies to. All given fields must match; an empty match matches all."""

    entity: str | None = None  # "global" or a host address
    cidr: list[str] = Field(default_factory=list)  # host inside any of these networks
    ports: list[int] = Field(default_factory=list)  # a top port of the window's evidence
    proto: Literal["tcp", "udp", "icmp", "ipv6-icmp"] | None = None
    features: list[str] = Field(default_factory=list)  # the feature furthest from what was expected (WindowScore.moved) is one of these

    @field_validator("cidr")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value

    def matches(self, score: WindowScore) -> bool:
        if self.entity is not None and score.entity != self.entity:
            return False
        if self.cidr:
            try:
                addr = ipaddress.ip_address(score.entity)
            except ValueError:
                return False
            if not any(addr in ipaddress.ip_network(n, strict=False) for n in self.cidr):
                return False
        ev = score.evidence
        if self.ports or self.proto:
            top = ev.top_ports if ev is not None else []
            if self.ports and not any(p["port"] in self.ports for p in top):
                return False
            if self.proto and not any(p["proto"] == self.proto for p in top):
                return False
        if self.features:
            if not score.moved or score.moved[0].name not in self.features:
                return False
        return True


class AllowRule(Match):
    name: str


class Schedule(_Strict):
    """Daily time-of-day window, optionally on some weekdays (0=Monday), read in `timezone`:
    UTC by default, or an IANA zone (Europe/Berlin), whose clock a maintenance window keeps
    across daylight saving (a UTC schedule for a 01:00 local backup is an hour off half the
    year)."""

    start: dt.time
    end: dt.time
    weekdays: list[int] = Field(default_factory=lambda: list(range(7)))
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: an IANA name such as Europe/Berlin or America/New_York "
                             "(from the machine's tz database, /usr/share/zoneinfo: Debian's tzdata)") from None
        return value

    def active(self, when: dt.datetime) -> bool:
        when = when.astimezone(zoneinfo.ZoneInfo(self.timezone))
        if when.weekday() not in self.weekdays:
            return False
        t = when.time()
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # spans midnight


class SuppressRule(Match):
    name: str
    start: dt.datetime | None = None  # a one-off maintenance window
    end: dt.datetime | None = None
    schedule: Schedule | None = None

    def active(self, when: dt.datetime) -> bool:
        if self.start is not None and when < _utc(self.start):
            return False
        if self.end is not None and when >= _utc(self.end):
            return False
        if self.schedule is not None and not self.schedule.active(when):
            return False
        return True


class SeverityRule(_Strict):
    """The first rule whose `min_ratio` (score / threshold) is reached sets the severity."""

    min_ratio: float = Field(ge=0)
    severity: Severity


class CategoryRule(_Strict):
    """Overrides the built-in category (classify.py): the first rule whose features include
    one of the window's top two, and whose role (when given) is the entity's, names it."""

    features: list[str]
    category: str
    role: Role | None = None  # originator | target: the entity's role in the anomaly
    techniques: list[str] | None = None  # ATT&CK ids; default: those of `attack` / the built-in category

    @field_validator("techniques")
    @classmethod
    def _technique_ids(cls, value: list[str] | None) -> list[str] | None:
        return _check_technique_ids(value) if value is not None else None


def _check_technique_ids(ids: list[str]) -> list[str]:
    for technique_id in ids:
        if not attack.TECHNIQUE_ID.fullmatch(technique_id):
            raise ValueError(f"{technique_id!r} is not an ATT&CK technique id (T1046, T1498.002)")
    return ids


class RuleSet(_Strict):
    allow: list[AllowRule] = Field(default_factory=list)
    suppress: list[SuppressRule] = Field(default_factory=list)
    severity: list[SeverityRule] = Field(default_factory=list)
    categories: list[CategoryRule] = Field(default_factory=list)
    attack: dict[str, list[str]] = Field(default_factory=dict)  # category -> ATT&CK technique ids

    @field_validator("attack")
    @classmethod
    def _attack_ids(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for ids in value.values():
            _check_technique_ids(ids)
        return value

    def check(self, score: WindowScore) -> None:
        """Raise Dropped if an allow or an active suppress rule covers this window."""
        for rule in self.allow:
            if rule.matches(score):
                raise Dropped(f"allow:{rule.name}")
        if self.suppress:
            when = dt.datetime.fromtimestamp(score.window_end_ns / 1e9, tz=dt.UTC)
            for suppress in self.suppress:
                if suppress.active(when) and suppress.matches(score):
                    raise Dropped(f"suppress:{suppress.name}")

    def severity_of(self, score: float, threshold: float) -> Severity:
        ratio = score / threshold if threshold > 0 else float("inf")
        for rule in sorted(self.severity, key=lambda r: -r.min_ratio):
            if ratio >= rule.min_ratio:
                return rule.severity
        return "medium"

    def classify(self, score: WindowScore) -> Classification:
        """The built-in reading of an anomalous window, with the operator's category rules
        and ATT&CK mapping applied over it."""
        found = classify(score)
        names = [c.name for c in score.moved[:2]]
        for rule in self.categories:
            if any(n in rule.features for n in names) and rule.role in (None, found.role):
                techniques = rule.techniques if rule.techniques is not None else self.techniques_of(rule.category)
                return dataclasses.replace(found, category=rule.category, techniques=tuple(techniques))
        return dataclasses.replace(found, techniques=tuple(self.techniques_of(found.category)))

    def category_of(self, score: WindowScore) -> str:
        return self.classify(score).category

    def techniques_of(self, category: str) -> list[str]:
        """The ATT&CK ids of a category: the rules' `attack` mapping, else the built-in one."""
        if category in self.attack:
            return list(self.attack[category])
        builtin = CATEGORIES.get(category)
        return list(builtin.techniques) if builtin is not None else []


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def load_rules(paths: list[str | Path]) -> RuleSet:
    """Merge rule files in order. Raises ConfigError naming file and line."""
    merged = RuleSet()
    for path in paths:
        data, root = read_yaml(path)
        part = validate_yaml_data(RuleSet, data, root, str(path))
        for key in ("allow", "suppress", "severity", "categories"):
            getattr(merged, key).extend(getattr(part, key))
        merged.attack.update(part.attack)  # a later file's mapping of a category wins
    if not merged.severity:
        merged.severity = [SeverityRule(min_ratio=0, severity="medium")]
    return merged


__all__ = ["ConfigError", "Dropped", "RuleSet", "SEVERITY_SCORE", "load_rules"]
