"""Host groups: home hosts modelled apart from the others, each group an entity class of its own.

Where this stands: in the model stage. The window stage names every home host's window
`host`; training (model.training.collect) and the scorer (model.scorer) read the windows of
a group's hosts as the group's class instead, so the group has its own networks, feature
scales, error scales and thresholds. A bundle keeps the groups it was trained with
(ModelBundle.host_groups), so every scorer of it (the daemon, `netad score`, a Kafka scorer)
groups alike, whatever its config says.

Why: one host class pools every home host, and its threshold is set by the busiest hosts'
ordinary windows. On a synthetic office of 206 hosts, six servers (a monitor polling every
workstation, a jump host, the DNS server) held 58 of the 76 benign test windows that
outscored a workstation's 20 MB upload, and the inbound features' error scales were set by
what the servers receive, so a workstation that started accepting SSH sessions scored 0.15
of the threshold (docs/EVALUATION.md sections xlix and l). Suricata users name such hosts
already ($HTTP_SERVERS, $DNS_SERVERS, ...); `training.host_groups` takes the same networks
(config.check_groups says what a group may be).

A host is in the group one of whose networks holds it (no network is in two groups); one in
none stays `host`. A group that had no windows in the training span gets no model, and its
hosts stay `host`: a bundle groups only into the classes it has.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from detector.contracts import ENTITY_HOST

_CACHE_MAX = 1 << 20  # entities whose class is remembered; past it the memo starts again


class HostGroups:
    """The class of each home host's window under `groups` (group name -> networks)."""

    def __init__(self, groups: Mapping[str, Sequence[str]]) -> None:
        self._nets = [(name, ipaddress.ip_network(net, strict=False)) for name, nets in groups.items() for net in nets]
        self._memo: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._nets)

    def class_of(self, entity: str) -> str:
        """The class of host `entity` (an address): its group's, or `host`."""
        cls = self._memo.get(entity)
        if cls is None:
            cls = ENTITY_HOST
            try:
                addr = ipaddress.ip_address(entity)
            except ValueError:
                addr = None
            if addr is not None:
                cls = next((name for name, net in self._nets if net.version == addr.version and addr in net), ENTITY_HOST)
            if len(self._memo) >= _CACHE_MAX:
                self._memo.clear()
            self._memo[entity] = cls
        return cls

    def classes(self, entities: Sequence[str], classes: Sequence[str]) -> list[str]:
        """`classes` (the window stage's, one per entity) with each `host` in a group named by it."""
        return [self.class_of(e) if c == ENTITY_HOST else c for e, c in zip(entities, classes, strict=True)]
