"""The synthetic office network: addresses and roles, and how busy each host is over time.

Where it stands: a private part of `detector.synth.generate` (test and demo traffic, not on
the daemon's path). `Network` says who is who (servers, workstations, admins, external
peers with their round-trip times and TTLs); `Activity` says how active each workstation is
in each minute (an on/off working rhythm, bursts, a slow drift, hosts that arrive late or
leave early), and `poisson_arrivals` turns activity into session start times.
"""

from __future__ import annotations

import ipaddress
import zlib
from dataclasses import dataclass

import numpy as np

NS_PER_S = 1_000_000_000
ACTIVITY_SLOT_S = 60
TTL_WINDOWS, TTL_LINUX = 128, 64


def rng_for(seed: int, name: str) -> np.random.Generator:
    """An independent random stream per traffic component, so that changing one component's
    draws leaves every other component's traffic as it was."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def ip_int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def ip_str(value: int) -> str:
    return str(ipaddress.IPv4Address(int(value)))


def _range_hosts(cidr: str) -> np.ndarray:
    net = ipaddress.IPv4Network(cidr)
    return np.arange(int(net.network_address) + 1, int(net.broadcast_address), dtype=np.int64).astype(np.uint32)


@dataclass
class Network:
    """Addresses (uint32) of the office network and the outside world it talks to."""

    home_net: str
    net_addr: int
    net_mask: int
    gateway: int
    dns: int  # also the office NTP server
    file_server: int  # SMB
    web_server: int  # intranet HTTPS
    ssh_jump: int
    monitor: int  # pings every host, scrapes the servers
    workstations: np.ndarray
    admins: np.ndarray  # indices into workstations
    external: np.ndarray  # external peers, most popular first
    external_rtt_ns: np.ndarray  # tap -> peer -> tap
    external_ttl: np.ndarray  # TTL of the peer's packets when they reach the tap
    upstream_dns: np.ndarray
    upstream_ntp: int
    cloud_agent: int  # every workstation's management agent checks in here
    backup_peer: int  # the file server's off-site backup
    ssh_attacker: int  # outside address of the SSH brute force (no benign peer uses it)
    remote_admin: int  # outside address of an admin's benign remote login

    @property
    def servers(self) -> np.ndarray:
        return np.array([self.dns, self.file_server, self.web_server, self.ssh_jump, self.monitor], dtype=np.uint32)


def make_network(profile: str, n_workstations: int, rng: np.random.Generator) -> Network:
    """The demo office (10.20.0.0/16, TEST-NET peers) or the benchmark site (10.30.0.0/16,
    peers from the benchmarking range 198.18.0.0/15, which has room for thousands)."""
    home = "10.20.0.0/16" if profile == "demo" else "10.30.0.0/16"
    net = ipaddress.IPv4Network(home)
    base = int(net.network_address)
    if n_workstations < 1 or n_workstations > 240 * 250:
        raise ValueError(f"hosts must be between 1 and {240 * 250}, got {n_workstations}")
    index = np.arange(n_workstations, dtype=np.int64)
    # workstations take .10 to .249 of 10.x.1.0/24, then of 10.x.2.0/24, and so on
    workstations = (base + ((1 + index // 240) << 8) + 10 + index % 240).astype(np.uint32)
    if profile == "demo":
        external = np.concatenate([_range_hosts(c) for c in ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24")])
        upstream_dns = np.array([ip_int("198.51.100.53"), ip_int("203.0.113.53")], dtype=np.uint32)
        roles = ("192.0.2.123", "203.0.113.10", "192.0.2.50", "203.0.113.66", "198.51.100.200")
        upstream_ntp, cloud_agent, backup_peer, ssh_attacker, remote_admin = (ip_int(x) for x in roles)
        reserved = np.array(sorted({ip_int(x) for x in roles + ("198.51.100.53", "203.0.113.53")}), dtype=np.uint32)
        external = external[~np.isin(external, reserved)]  # a role's traffic is only its own
    else:
        pool = _range_hosts("198.18.0.0/15")
        external = rng.choice(pool[1024:], size=min(20_000, pool.size - 1024), replace=False)
        upstream_dns = pool[[52, 53]]
        roles_at = (123, 10, 50, 66, 200)
        upstream_ntp, cloud_agent, backup_peer, ssh_attacker, remote_admin = (int(pool[i]) for i in roles_at)
    external = rng.permutation(external)  # popularity rank is random over the ranges
    n_ext = external.shape[0]
    rtt_ms = np.clip(rng.lognormal(np.log(30.0), 0.7, n_ext), 4.0, 280.0)
    initial_ttl = rng.choice(np.array([64, 128, 255]), size=n_ext, p=[0.7, 0.25, 0.05])
    hops = rng.integers(8, 23, n_ext)
    n_admins = max(1, min(2, n_workstations // 10))
    return Network(
        home_net=home,
        net_addr=base,
        net_mask=int(net.netmask),
        gateway=base + 1,
        dns=base + 2,
        file_server=base + 5,
        web_server=base + 6,
        ssh_jump=base + 22,
        monitor=base + 10,
        workstations=workstations,
        admins=np.arange(n_admins),
        external=external,
        external_rtt_ns=(rtt_ms * 1e6).astype(np.int64),
        external_ttl=(initial_ttl - hops).astype(np.uint8),
        upstream_dns=upstream_dns,
        upstream_ntp=upstream_ntp,
        cloud_agent=cloud_agent,
        backup_peer=backup_peer,
        ssh_attacker=ssh_attacker,
        remote_admin=remote_admin,
    )


@dataclass
class Activity:
    """Per-workstation activity per minute slot (mean about 1 while working), and the span
    in which each workstation is powered on at all."""

    slot_start_ns: np.ndarray  # (n_slots,)
    level: np.ndarray  # (n_hosts, n_slots) float
    up_from_ns: np.ndarray  # (n_hosts,)
    up_until_ns: np.ndarray

    def is_up(self, host: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
        return (t_ns >= self.up_from_ns[host]) & (t_ns < self.up_until_ns[host])


def make_activity(rng: np.random.Generator, n_hosts: int, begin_ns: int, end_ns: int, *, churn: bool) -> Activity:
    """Working rhythm: each host alternates working spells (mean 25 min) and breaks (mean
    8 min, little traffic); a host's own level is lognormal (some users are much busier),
    each minute has gamma noise (bursts), and a slow sine adds drift over the hour."""
    slot_ns = ACTIVITY_SLOT_S * NS_PER_S
    n_slots = max(1, -(-(end_ns - begin_ns) // slot_ns))
    slot_start = begin_ns + np.arange(n_slots, dtype=np.int64) * slot_ns
    p_stop, p_resume = 1.0 / 25.0, 1.0 / 8.0
    working = np.empty((n_hosts, n_slots), dtype=bool)
    working[:, 0] = rng.random(n_hosts) < p_resume / (p_stop + p_resume)
    flips = rng.random((n_hosts, n_slots))
    for k in range(1, n_slots):  # a loop over minutes, vectorised over hosts
        prev = working[:, k - 1]
        working[:, k] = np.where(prev, flips[:, k] >= p_stop, flips[:, k] < p_resume)
    own = rng.lognormal(0.0, 0.6, n_hosts)
    own /= own.mean()
    noise = rng.gamma(2.0, 0.5, (n_hosts, n_slots))
    phase = rng.uniform(0, 2 * np.pi, n_hosts)
    minutes = np.arange(n_slots)
    drift = 1.0 + 0.3 * np.sin(2 * np.pi * minutes[None, :] / 70.0 + phase[:, None])
    level = own[:, None] * np.where(working, 1.0, 0.08) * noise * drift

    up_from = np.full(n_hosts, np.iinfo(np.int64).min // 2, dtype=np.int64)
    up_until = np.full(n_hosts, np.iinfo(np.int64).max // 2, dtype=np.int64)
    if churn and n_hosts >= 5:
        span = end_ns - begin_ns
        late = rng.random(n_hosts) < 0.10
        early = rng.random(n_hosts) < 0.05
        late[0] = early[0] = False  # keep the admins' first workstation up throughout
        up_from[late] = begin_ns + (rng.uniform(0.05, 0.35, int(late.sum())) * span).astype(np.int64)
        up_until[early] = begin_ns + (rng.uniform(0.75, 0.95, int(early.sum())) * span).astype(np.int64)
    return Activity(slot_start_ns=slot_start, level=level, up_from_ns=up_from, up_until_ns=up_until)


def poisson_arrivals(
    rng: np.random.Generator, activity: Activity, rate_per_min: float
) -> tuple[np.ndarray, np.ndarray]:
    """Session starts (host index, t_ns), Poisson within each minute at rate_per_min times the
    host's activity, only while the host is up; sorted by time."""
    slot_ns = ACTIVITY_SLOT_S * NS_PER_S
    counts = rng.poisson(activity.level * rate_per_min)
    host, slot = np.nonzero(counts)
    reps = counts[host, slot]
    host = np.repeat(host, reps)
    t = np.repeat(activity.slot_start_ns[slot], reps) + (rng.random(host.shape[0]) * slot_ns).astype(np.int64)
    keep = activity.is_up(host, t)
    host, t = host[keep], t[keep]
    order = np.argsort(t, kind="stable")
    return host[order], t[order]


def lognormal_int(rng: np.random.Generator, median: float, sigma: float, lo: int, hi: int, n: int) -> np.ndarray:
    """Integer sizes (or durations) with a lognormal body, clipped to [lo, hi]."""
    return np.clip(rng.lognormal(np.log(median), sigma, n), lo, hi).astype(np.int64)


def ephemeral_ports(rng: np.random.Generator, n: int) -> np.ndarray:
    """Client ports from the IANA dynamic range (what Windows and most stacks use)."""
    return rng.integers(49152, 65536, n).astype(np.uint16)
