"""MITRE ATT&CK: the techniques and tactics netad's incident categories map to.

Where it stands: reference data for the alerting stage. The classifier (classify.py) names an
incident's category and its technique ids; formats.py writes them as ECS `threat.*`, OCSF
`finding_info.attacks` and a CEF extension. Only what netad maps to, or an operator is likely
to map to (rules' `attack:`), is listed; an id that is not here is still written, by its id
alone (no name, no tactic), so a newer ATT&CK release never needs a netad release.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FRAMEWORK = "MITRE ATT&CK"
# The Enterprise matrix release the names below were checked against (OCSF `attack.version`).
ATTACK_VERSION = "16.1"

TECHNIQUE_ID = re.compile(r"T\d{4}(\.\d{3})?")

TACTICS: dict[str, str] = {
    "TA0001": "Initial Access",
    "TA0003": "Persistence",
    "TA0006": "Credential Access",
    "TA0007": "Discovery",
    "TA0008": "Lateral Movement",
    "TA0010": "Exfiltration",
    "TA0011": "Command and Control",
    "TA0040": "Impact",
    "TA0043": "Reconnaissance",
}


@dataclass(frozen=True)
class Technique:
    """A technique or sub-technique (T1498.002) with the tactics it serves."""

    id: str
    name: str = ""  # "" when the id is not in this catalogue
    tactics: tuple[str, ...] = ()

    @property
    def parent_id(self) -> str:
        """The technique itself for a sub-technique (T1498 for T1498.002), else the id."""
        return self.id.split(".", 1)[0]

    @property
    def is_sub(self) -> bool:
        return "." in self.id


_CATALOGUE = (
    Technique("T1018", "Remote System Discovery", ("TA0007",)),
    Technique("T1021", "Remote Services", ("TA0008",)),
    Technique("T1041", "Exfiltration Over C2 Channel", ("TA0010",)),
    Technique("T1046", "Network Service Discovery", ("TA0007",)),
    Technique("T1048", "Exfiltration Over Alternative Protocol", ("TA0010",)),
    Technique("T1071", "Application Layer Protocol", ("TA0011",)),
    Technique("T1110", "Brute Force", ("TA0006",)),
    Technique("T1110.001", "Password Guessing", ("TA0006",)),
    Technique("T1133", "External Remote Services", ("TA0003", "TA0001")),
    Technique("T1498", "Network Denial of Service", ("TA0040",)),
    Technique("T1498.001", "Direct Network Flood", ("TA0040",)),
    Technique("T1498.002", "Reflection Amplification", ("TA0040",)),
    Technique("T1499", "Endpoint Denial of Service", ("TA0040",)),
    Technique("T1499.001", "OS Exhaustion Flood", ("TA0040",)),
    Technique("T1571", "Non-Standard Port", ("TA0011",)),
    Technique("T1573", "Encrypted Channel", ("TA0011",)),
    Technique("T1595", "Active Scanning", ("TA0043",)),
    Technique("T1595.001", "Scanning IP Blocks", ("TA0043",)),
    Technique("T1595.002", "Vulnerability Scanning", ("TA0043",)),
)
TECHNIQUES: dict[str, Technique] = {t.id: t for t in _CATALOGUE}


def technique(technique_id: str) -> Technique:
    """The catalogue's entry for an id; an unknown id as a Technique without name or tactics
    (a sub-technique inherits its parent's tactics: they are the same in ATT&CK)."""
    known = TECHNIQUES.get(technique_id)
    if known is not None:
        return known
    parent = TECHNIQUES.get(technique_id.split(".", 1)[0])
    return Technique(technique_id, "", parent.tactics if parent is not None else ())


def valid_ids(ids: object) -> list[str]:
    """The well-formed technique ids of `ids`, in order, once each (anything else is dropped:
    events from a spool or an old checkpoint are not trusted to hold only ids)."""
    if not isinstance(ids, list | tuple):
        return []
    return list(dict.fromkeys(i for i in ids if isinstance(i, str) and TECHNIQUE_ID.fullmatch(i)))
