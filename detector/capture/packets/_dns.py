"""Capture stage: the DNS answers in a batch of frames, for naming each peer by its domain.

Where this stands in the pipeline::

    file bytes / ring --walk--> offsets, caplens, ts_ns --dns_answers--> DnsAnswers (beside the PacketBatch)

A peer's address says little on its own: a cloud service answers its name from a new
address every few hours, and each new address is a "new peer" to a history kept by address
(docs/EVALUATION.md, section xix: the honeypot bridge's 08:02 look-up of a new name under
`philips.com`, which it talks to every hour, opened an incident on both classes in every
seed). The answers a host received say which name an address stands for. This module reads
them off the wire, beside the frame parse: the parse notes which frames come from UDP port
53 (parse_into's `dns_at`), and a numba kernel reads the DNS messages of those alone.

What is read, and what is not:
- a response (QR 1, opcode 0, RCODE 0) with exactly one question, whose name is a plain
  label sequence (no compression pointer: a question's name never needs one), at most 255
  bytes;
- its A (4-byte) and AAAA (16-byte) answers of class IN, at most MAX_ANSWERS per response,
  whatever their owner name (a CNAME chain's last name answers for the first: the client
  asked for the question's name, and that is the name its peer stands for);
- the client is the response's destination address; an answer is (time, client, address,
  the question's name);
- nothing else: not TCP (zone transfers, long answers), not DoH/DoT (encrypted), not
  mDNS/LLMNR (port 5353/5355, not a resolver's answers). A message that breaks any bound
  yields what it gave before the break, and never a crash.

The registered domain of each name (capture.names, from the public-suffix list with its
private part, so `x.cloudfront.net` and `y.cloudfront.net` stay apart) is read in Python,
once per distinct name of a batch: a batch holds few answers.
"""

from __future__ import annotations

import numpy as np

from detector.capture.names import MAX_ANSWERS, named_answers, registered
from detector.capture.packets._parse import (
    _BY_VERSION,
    _V4,
    _V6,
    _be16,
    _be64u,
    _ipv4,
    _ipv6,
    _jit,
    _link_layer,
    kernel_frames,
)
from detector.contracts import DnsAnswers


@_jit
def _answers_kernel(data, offsets, caplens, ts_ns, linktypes, per_frame_linktype, start_frame,
                    out_ts, out_c_hi, out_c_lo, out_a_hi, out_a_lo, out_name_at, out_name_len):
    """Answers of frames start_frame.. into the out arrays; returns (rows, next frame): the
    frame to resume from when the out arrays filled (each needs MAX_ANSWERS of room)."""
    size = data.shape[0]
    cap = out_ts.shape[0]
    rows = 0
    v4_mapped = np.uint64(0x0000FFFF00000000)
    for i in range(start_frame, offsets.shape[0]):
        if rows + MAX_ANSWERS > cap:
            return rows, i
        start = offsets[i]
        if start < 0 or caplens[i] < 0 or start > size:
            continue
        end = min(start + caplens[i], size)
        linktype = linktypes[i] if per_frame_linktype else linktypes[0]
        kind, p, end, _vlan = _link_layer(data, start, end, linktype)
        if kind == _BY_VERSION:
            kind = _V4 if p < end and (data[p] >> 4) == 4 else _V6
        c_hi = np.uint64(0)
        c_lo = np.uint64(0)
        if kind == _V4:
            ok, _src, dst, proto, _len, _frag, l4, l4_end = _ipv4(data, p, end)
            c_lo = v4_mapped | np.uint64(dst)
        elif kind == _V6:
            ok, proto, _len, _frag, l4, l4_end = _ipv6(data, p, end)
            if ok:
                c_hi = _be64u(data, p + 24)
                c_lo = _be64u(data, p + 32)
        else:
            continue
        if not ok or proto != 17 or l4 < 0 or l4 + 8 > l4_end or _be16(data, l4) != 53:
            continue
        m = l4 + 8  # the DNS message
        m_end = min(l4_end, l4 + _be16(data, l4 + 4)) if _be16(data, l4 + 4) >= 8 else l4_end
        if m + 12 > m_end:
            continue
        flags = _be16(data, m + 2)
        if (flags & 0x8000) == 0 or (flags & 0x7800) != 0 or (flags & 0x000F) != 0:
            continue  # a query, another opcode, or an error
        if _be16(data, m + 4) != 1:
            continue
        ancount = _be16(data, m + 6)
        q = m + 12
        name_at = q
        bad = False
        while True:
            if q >= m_end:
                bad = True
                break
            n = np.int64(data[q])
            if n == 0:
                q += 1
                break
            if n & 0xC0 or q + 1 + n > m_end or q + 1 + n - name_at > 255:
                bad = True
                break
            q += 1 + n
        if bad or q - name_at < 2:
            continue  # the root's name is no name
        name_len = q - name_at
        q += 4  # QTYPE, QCLASS
        found = 0
        for _a in range(ancount):
            # the owner name: labels, ending in a zero or a pointer
            while q < m_end:
                n = np.int64(data[q])
                if n == 0:
                    q += 1
                    break
                if (n & 0xC0) == 0xC0:
                    q += 2
                    break
                if n & 0xC0:
                    q = m_end  # reserved label types: stop
                    break
                q += 1 + n
            if q + 10 > m_end:
                break
            rtype = _be16(data, q)
            rclass = _be16(data, q + 2)
            rdlen = _be16(data, q + 8)
            r = q + 10
            if r + rdlen > m_end:
                break
            if rclass == 1 and ((rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16)):
                out_ts[rows] = ts_ns[i]
                out_c_hi[rows] = c_hi
                out_c_lo[rows] = c_lo
                if rtype == 1:
                    a = (np.uint64(data[r]) << np.uint64(24)) | (np.uint64(data[r + 1]) << np.uint64(16)) \
                        | (np.uint64(data[r + 2]) << np.uint64(8)) | np.uint64(data[r + 3])
                    out_a_hi[rows] = 0
                    out_a_lo[rows] = v4_mapped | a
                else:
                    out_a_hi[rows] = _be64u(data, r)
                    out_a_lo[rows] = _be64u(data, r + 8)
                out_name_at[rows] = name_at
                out_name_len[rows] = name_len
                rows += 1
                found += 1
                if found == MAX_ANSWERS:
                    break
            q = r + rdlen
    return rows, offsets.shape[0]


def dns_answers(data: np.ndarray, offsets: np.ndarray, caplens: np.ndarray, ts_ns: np.ndarray,
                linktype: int | np.ndarray, at: np.ndarray | None = None) -> DnsAnswers:
    """The DNS answers among the frames data[offsets[i] : offsets[i] + caplens[i]] (the
    arguments of parse_frames), or only among frames `at` (parse_into's UDP/53 frames: the
    parse has walked them all once already). Nothing in the bytes can make this raise."""
    if at is not None:
        if not len(at):
            return DnsAnswers.empty()
        offsets, caplens, ts_ns = (np.asarray(c)[at] for c in (offsets, caplens, ts_ns))
        linktype = linktype if np.ndim(linktype) == 0 else np.asarray(linktype)[at]
    frames = kernel_frames(data, offsets, caplens, ts_ns, linktype)
    data, n = frames[0], frames[1].shape[0]
    parts, frame, cap = [], 0, 256
    while frame < n:
        out = (np.empty(cap, np.int64), *(np.empty(cap, np.uint64) for _ in range(4)),
               np.empty(cap, np.int64), np.empty(cap, np.int64))
        rows, frame = _answers_kernel(*frames, frame, *out)
        rows = int(rows)
        if rows:
            wires = [bytes(data[a:a + k]) for a, k in zip(out[5][:rows].tolist(), out[6][:rows].tolist(), strict=True)]
            keys, names = zip(*(registered(_wire_name(w)) for w in wires), strict=True)
            parts.append(DnsAnswers(*(o[:rows].copy() for o in out[:5]), np.array(keys, np.uint64),
                                    names=named_answers(list(keys), list(names))))
        cap *= 4
    return DnsAnswers.concat(parts)


def _wire_name(wire: bytes) -> str:
    """A question's label sequence as a lower-case dotted name ('' when not text)."""
    labels, i = [], 0
    while i < len(wire) and wire[i]:
        labels.append(wire[i + 1:i + 1 + wire[i]])
        i += 1 + wire[i]
    try:
        return b".".join(labels).decode("ascii").lower()
    except UnicodeDecodeError:
        return ""


