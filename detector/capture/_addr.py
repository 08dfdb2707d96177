"""What an address (its (hi, lo) 64-bit halves, IPv4 mapped) says by itself, and what a
datagram's size says of its sender. Written once for numpy (arrays: the flow records'
windows) and compiled by numba for the flow table's per-packet loop."""

from __future__ import annotations

import numba
import numpy as np

_V4_HI, _V4_TAG = np.uint64(0), np.uint64(0xFFFF)
_S32, _S56 = np.uint64(32), np.uint64(56)
_V4_CLASS_D, _V4_D, _V4_ALL = np.uint64(0xF0000000), np.uint64(0xE0000000), np.uint64(0xFFFFFFFF)
_V6_MULTICAST = np.uint64(0xFF)
_DNS_HEADER = 12  # bytes: the smallest DNS message, a header alone


def _group(hi, lo):  # numpy arrays, or numba's uint64 scalars
    v4 = (hi == _V4_HI) & ((lo >> _S32) == _V4_TAG)
    v4_group = ((lo & _V4_CLASS_D) == _V4_D) | ((lo & _V4_ALL) == _V4_ALL)
    return (v4 & v4_group) | ((hi >> _S56) == _V6_MULTICAST)  # an IPv4-mapped hi is 0, never ff..


def group_address(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Whether each (hi, lo) address is a group's, not a host's: IPv4 multicast (224.0.0.0/4)
    or the limited broadcast, IPv6 multicast (ff00::/8)."""
    return _group(np.asarray(hi).astype(np.uint64), np.asarray(lo).astype(np.uint64))


group_address_jit = numba.njit(cache=True, inline="always")(_group)


def _dns_probe(proto, sport, hi, lo, ip_bytes, packets):  # numpy arrays, or numba scalars
    v4 = (hi == _V4_HI) & ((lo >> _S32) == _V4_TAG)
    headers = 48 - 20 * v4  # IP and UDP headers: 28 bytes over IPv4, 48 over IPv6
    return (proto == 17) & (sport == 53) & (ip_bytes < packets * (headers + _DNS_HEADER))


def dns_probe(proto: np.ndarray, sport: np.ndarray, hi: np.ndarray, lo: np.ndarray, ip_bytes: np.ndarray,
              packets: np.ndarray) -> np.ndarray:
    """Whether each datagram (or record of `packets` datagrams and `ip_bytes` IP bytes) was
    sent from UDP port 53 (the sender's address `hi`, `lo`) with less payload than a DNS
    header: no answer, whatever its ports say, but a probe sent from port 53 (nmap
    --source-port 53: a UDP scan, mostly empty datagrams, past firewalls that let DNS answers
    in). A record that counts Ethernet padding in its bytes (softflowd: 46 for an empty
    probe) is not caught, and is read by its ports as before."""
    return _dns_probe(np.asarray(proto), np.asarray(sport), np.asarray(hi).astype(np.uint64), np.asarray(lo).astype(np.uint64),
                      np.asarray(ip_bytes), np.asarray(packets))


dns_probe_jit = numba.njit(cache=True, inline="always")(_dns_probe)
