"""SSH connections for the synthetic generator: admins at work, and the raw material of the
brute-force attack and the remote-login event.

Where it stands: a private part of `detector.synth.generate` (test and demo traffic, not on
the daemon's path). An SSH connection here is a script of bursts, as OpenSSH sends them:
version strings, key exchange, authentication (refused passwords wait out PAM's delay),
then, after a login, typing: keystrokes echoed back, now and then a command's output.
"""

from __future__ import annotations

import numpy as np

from detector.synth._benign import CLOSE_CLIENT, MS, US, Span, round_index, tcp_table
from detector.synth._frames import PacketTable
from detector.synth._network import NS_PER_S, TTL_LINUX, TTL_WINDOWS, Activity, Network, lognormal_int
from detector.synth._sessions import Bursts, tcp_sessions

# (sent by the server?, min bytes, max bytes, think ms): what an OpenSSH connection sends
# before the user is in, one burst per message group
SSH_PRELUDE = (
    (True, 21, 42, 1.0),  # server identification string
    (False, 21, 40, 0.3),  # client identification string
    (False, 1380, 1560, 0.1),  # client KEXINIT
    (True, 1060, 1100, 0.5),  # server KEXINIT
    (False, 44, 52, 0.5),  # ECDH init
    (True, 500, 1100, 4.0),  # ECDH reply: host key, signature, NEWKEYS
    (False, 16, 16, 0.5),  # NEWKEYS
    (False, 44, 52, 0.1),  # ssh-userauth service request
    (True, 44, 52, 0.3),  # service accept
)
SSH_LOGIN = (
    (False, 400, 700, 1.0),  # public key and signature
    (True, 28, 36, 20.0),  # USERAUTH_SUCCESS
    (False, 100, 120, 1.0),  # channel open
    (True, 44, 60, 1.0),  # open confirmation
    (False, 300, 500, 1.0),  # pty, environment, shell requests
    (True, 100, 400, 30.0),  # banner and prompt
)
PAM_FAIL_DELAY_MS = 2_000.0  # sshd answers a wrong password only after PAM's delay
ADMIN_LOGINS_PER_HOUR = 2.0  # per admin
# where each part of a connection sorts among its bursts
_ORDER_PRELUDE, _ORDER_ATTEMPTS, _ORDER_LOGIN, _ORDER_TYPING = 0, 100, 10_000, 20_000

_Part = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # session, order, from_server, bytes, gap


def _merge_bursts(parts: list[_Part]) -> Bursts:
    """Bursts from parts of (session, order, from_server, bytes, gap), in session order."""
    session, order, from_server, nbytes, gap = (np.concatenate([p[i] for p in parts]) for i in range(5))
    idx = np.lexsort((order, session))
    return Bursts(session=session[idx], from_server=from_server[idx], payload_bytes=nbytes[idx], gap_ns=gap[idx])


def _script(
    rng: np.random.Generator,
    steps: tuple[tuple[bool, int, int, float], ...],
    session: np.ndarray,
    rtt_server: np.ndarray,
    rtt_client: np.ndarray,
    order_base: int,
) -> list[_Part]:
    """Burst rows for a fixed script run once by every listed session. A reply waits one
    round trip to the other side plus think time; a follow-up by the same side only the
    think time."""
    n = session.shape[0]
    parts = []
    for i, (from_server, lo, hi, think_ms) in enumerate(steps):
        turn = i == 0 or steps[i - 1][0] != from_server
        wait = (rtt_server if from_server else rtt_client)[session] * turn
        think = (think_ms * MS * rng.uniform(0.5, 1.5, n)).astype(np.int64)
        order = np.full(n, order_base + i)
        parts.append((session, order, np.full(n, from_server), rng.integers(lo, hi + 1, n), wait + think))
    return parts


def ssh_sessions(
    rng: np.random.Generator,
    t_ns: np.ndarray,
    client: np.ndarray,
    server: np.ndarray | int,
    *,
    rtt_server_ns: np.ndarray,
    failed_attempts: np.ndarray,
    interactive_rounds: np.ndarray,
    ttl_client: np.ndarray | int,
    ttl_server: np.ndarray | int = TTL_LINUX,
    segment_gap_ns: np.ndarray | None = None,
    close_p: tuple[float, ...] = CLOSE_CLIENT,
    tag: int = 0,
) -> PacketTable:
    """SSH connections to port 22: the prelude, `failed_attempts` refused passwords each,
    then, where `interactive_rounds` > 0, a login and that many keystroke rounds."""
    n = t_ns.shape[0]
    sessions = tcp_table(
        rng, t_ns, client, server, 22, rtt_server_ns=rtt_server_ns, segment_gap_ns=segment_gap_ns,
        ttl_client=ttl_client, ttl_server=ttl_server, close_p=close_p,
        close_gap_ns=rng.integers(1 * MS, 50 * MS, n), tag=tag,
    )
    rtt_s, rtt_c = sessions.rtt_server_ns, sessions.rtt_client_ns
    every = np.arange(n)
    parts = _script(rng, SSH_PRELUDE, every, rtt_s, rtt_c, _ORDER_PRELUDE)

    attempt_of = np.repeat(every, failed_attempts)
    k = round_index(failed_attempts)
    m = attempt_of.shape[0]
    client_wait = rtt_c[attempt_of] + rng.integers(1 * MS, 40 * MS, m)
    parts.append((attempt_of, _ORDER_ATTEMPTS + 2 * k, np.zeros(m, dtype=bool), rng.integers(84, 141, m), client_wait))
    fail_wait = rtt_s[attempt_of] + (PAM_FAIL_DELAY_MS * MS * rng.uniform(0.9, 1.3, m)).astype(np.int64)
    parts.append((attempt_of, _ORDER_ATTEMPTS + 1 + 2 * k, np.ones(m, dtype=bool), rng.integers(44, 61, m), fail_wait))

    login = np.flatnonzero(interactive_rounds > 0)
    parts += _script(rng, SSH_LOGIN, login, rtt_s, rtt_c, _ORDER_LOGIN)
    rounds = interactive_rounds[login]
    typing_of = np.repeat(login, rounds)
    k = round_index(rounds)
    m = typing_of.shape[0]
    think_s = np.where(rng.random(m) < 0.1, rng.exponential(8.0, m), rng.exponential(0.5, m))  # reading output
    think = (think_s * NS_PER_S).astype(np.int64)
    parts.append((typing_of, _ORDER_TYPING + 2 * k, np.zeros(m, dtype=bool), rng.integers(36, 53, m), think))
    output = rng.random(m) < 0.25  # else the echo of the keystroke
    reply = np.where(output, lognormal_int(rng, 600, 1.3, 36, 200_000, m), rng.integers(36, 53, m))
    reply_wait = rtt_s[typing_of] + np.where(
        output, lognormal_int(rng, 5 * MS, 1.0, 100 * US, 2 * NS_PER_S, m), rng.integers(50 * US, 500 * US, m)
    )
    parts.append((typing_of, _ORDER_TYPING + 1 + 2 * k, np.ones(m, dtype=bool), reply, reply_wait))
    return tcp_sessions(sessions, _merge_bursts(parts), rng)


def admin_ssh(net: Network, act: Activity, rng: np.random.Generator, span: Span) -> PacketTable:
    """Admins log in to the jump host a couple of times an hour, and from there often on
    to the file or web server."""
    duration_ns = span.end_ns - span.begin_ns
    counts = rng.poisson(duration_ns / NS_PER_S / 3600.0 * ADMIN_LOGINS_PER_HOUR, net.admins.shape[0])
    admin = np.repeat(net.admins, counts)
    t = span.begin_ns + (rng.random(admin.shape[0]) * duration_ns).astype(np.int64)
    keep = act.is_up(admin, t)
    admin, t = admin[keep], t[keep]
    n = admin.shape[0]
    rounds = rng.geometric(1 / 60, n)
    outer = ssh_sessions(
        rng, t, net.workstations[admin], net.ssh_jump, rtt_server_ns=rng.integers(150 * US, 400 * US, n),
        failed_attempts=np.zeros(n, dtype=np.int64), interactive_rounds=rounds, ttl_client=TTL_WINDOWS,
    )
    hop = np.flatnonzero(rng.random(n) < 0.5)
    m = hop.size
    inner = ssh_sessions(
        rng, t[hop] + rng.integers(5, 30, m) * NS_PER_S, np.full(m, net.ssh_jump, np.uint32),
        rng.choice(np.array([net.file_server, net.web_server], dtype=np.uint32), m),
        rtt_server_ns=rng.integers(150 * US, 400 * US, m), failed_attempts=np.zeros(m, dtype=np.int64),
        interactive_rounds=np.maximum(1, rounds[hop] // 2), ttl_client=TTL_LINUX,
    )
    return PacketTable.concat([outer, inner])
