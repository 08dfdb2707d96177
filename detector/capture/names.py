"""Capture stage: the registered domain of a name a host asked the DNS for, as the key the
peer history keeps (capture.windows._history). Written once for both ways the answers come
in: off the wire (capture.packets._dns) and from Zeek's dns.log (capture.flowrecords._zeekdns).

A registered domain is the public suffix and one label more, from the public-suffix list
(`publicsuffixlist`, its bundled copy: nothing is fetched) with its private part included,
so that two `cloudfront.net` customers stay apart.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

MAX_ANSWERS = 8  # addresses per response: a client connects to one of the first few


@lru_cache(maxsize=1)
def _suffixes():
    from publicsuffixlist import PublicSuffixList  # its bundled list: nothing is fetched

    return PublicSuffixList()


def registered_domain(name: str) -> str | None:
    """The registered domain of a host name (the public suffix and one label more, private
    suffixes included: `a.b.philips.com` -> `philips.com`, `x.cloudfront.net` itself), or
    None for a suffix alone, an empty name or an address written as a name."""
    if not name or name.replace(".", "").isdigit():
        return None
    return _suffixes().privatesuffix(name.rstrip(".").lower())


@lru_cache(maxsize=65536)
def registered(name: str) -> tuple[int, str | None]:
    """A name's registered domain as the 64-bit key DnsAnswers.domain holds (odd: 0 is none),
    and as text (DnsAnswers.names)."""
    domain = registered_domain(name)
    if not domain:
        return 0, None
    return int.from_bytes(hashlib.blake2b(domain.encode("ascii", "replace"), digest_size=8).digest(), "little") | 1, domain


def named_answers(keys: list[int], names: list[str | None]) -> dict[int, str]:
    """The names a batch's answers carry: each key's registered domain, once."""
    return {k: n for k, n in zip(keys, names, strict=True) if k and n}
