#!/usr/bin/env python3
"""Make the seed corpus of the NBD fuzz target (fuzz-nbd.c).

Usage: make-nbd-seeds.py DIR

Each seed is an export (size, block size constraints, meta contexts)
followed by the direct steps and the block status replies, in the
order the target reads them: replies that tell the truth, and the
lies of the NBD protocol's block status (doc/proto.md) that a client
must survive: extents past the end, empty, more than asked, fewer,
unknown flags, a context not asked for, a reply for another offset,
a reply of many extents, error replies.
"""
import os
import struct
import sys

MiB = 1 << 20
HOLE, ZERO = 1, 2
OTHER, ALLOC, DEPTH = 0, 1, 3        # the context selector's low bits
AT_ANY, ERROR, MANY, ODD = 4, 8, 16, 32
STEPS = 8                            # DIRECT_STEPS


def export(size, min_b=0, pref_b=0, max_b=0, alloc=True, depth=False,
           fail_after=None, big=False):
    flags = (1 if alloc else 0) | (2 if depth else 0) | (8 if big else 0)
    out = struct.pack(">QIII", size, min_b, pref_b, max_b)
    if fail_after is not None:
        return out + struct.pack(">BH", flags | 4, fail_after)
    return out + struct.pack(">B", flags)


def offset(v, nbytes=4):
    """pick_offset: the value v as is, in nbytes (8, 2, 3 or 4)."""
    how = {8: 0, 2: 1, 3: 2, 4: 3}[nbytes]
    return struct.pack(">B", how) + v.to_bytes(nbytes, "big")


def read_step(off, count):
    return b"\x00" + offset(off) + count.to_bytes(3, "big")


def extents_step(off, count):
    return b"\x01" + offset(off) + offset(count)


def reply(*chunks, fail=False):
    """A block status reply: chunks of (context, pairs[, at, error])."""
    out = struct.pack(">B", len(chunks))
    for c in chunks:
        context, pairs = c[0], c[1]
        how = context
        at = c[2] if len(c) > 2 else None
        if at is not None:
            how |= AT_ANY
        if len(c) > 3 and c[3]:
            how |= ERROR
        if len(c) > 4:
            how |= c[4]
        out += struct.pack(">B", how)
        if at is not None:
            out += struct.pack(">Q", at)
        count = len(pairs) >> 4 if how & MANY else len(pairs)
        out += struct.pack(">H", count)
        for length, flags in pairs[:16] if how & MANY else pairs:
            out += struct.pack(">II", length, flags)
    return out + struct.pack(">B", 1 if fail else 0)


def reads(n=STEPS):
    return b"".join(read_step(i * 4096, 8192) for i in range(n))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    seeds = {}
    size = 4 * MiB
    # The truth, one window: data, zeros, a hole.
    seeds["truth"] = export(size) + reads() + reply(
        (ALLOC, [(MiB, 0), (MiB, ZERO), (2 * MiB, HOLE | ZERO)]))
    # Depth too: allocation says data where depth says unallocated.
    seeds["depth"] = export(size, depth=True) + reads() + reply(
        (ALLOC, [(2 * MiB, 0), (2 * MiB, HOLE | ZERO)]),
        (DEPTH, [(MiB, 1), (3 * MiB, 0)]))
    # Short answers, asked on.
    seeds["short"] = export(size) + reads() + b"".join(
        reply((ALLOC, [(MiB, i % 2 * ZERO)])) for i in range(4))
    # Past the end, an empty extent, unknown flags.
    seeds["past-end"] = export(size) + reads() + reply(
        (ALLOC, [(size + MiB, 0)]))
    seeds["empty-extent"] = export(size) + reads() + reply(
        (ALLOC, [(0, 0), (size, 0)]))
    seeds["unknown-flags"] = export(size) + reads() + reply(
        (ALLOC, [(MiB, 0xfffffffc), (MiB, 0xffffffff), (2 * MiB, HOLE)]))
    # No chunk, a context not asked for, another offset, an error.
    seeds["no-chunk"] = export(size) + reads() + reply()
    seeds["other-context"] = export(size) + reads() + reply(
        (OTHER, [(size, HOLE | ZERO)]), (ALLOC, [(size, 0)]))
    seeds["other-offset"] = export(size) + reads() + reply(
        (ALLOC, [(size, 0)], 4096))
    seeds["error"] = export(size) + reads() + reply(
        (ALLOC, [(size, 0)], None, True), fail=True)
    seeds["twice"] = export(size) + reads() + reply(
        (ALLOC, [(MiB, 0)]), (ALLOC, [(MiB, ZERO)]))
    # Many extents in one reply: 16 pairs repeated 8192 times, more
    # than a reply may keep.
    seeds["many"] = export(64 * MiB, big=True) + extents_step(0, 64 * MiB) \
        + reply(
        (ALLOC, [(512, 0), (512, ZERO)] * 8 + [(0, 0)] * (8192 * 16 - 16),
         None, False, MANY))
    seeds["odd"] = export(size) + reads() + reply(
        (ALLOC, [(MiB, 0), (3 * MiB, ZERO)], None, False, ODD))
    # Block size constraints: proper, absurd, and reads across blocks.
    seeds["blocks"] = export(size + 1000, 4096, 65536, 1 << 20) + b"".join(
        read_step(o, c) for o, c in
        [(1, 4095), (4095, 2), (size, 1000), (size + 999, 1),
         (1000, 200000), (0, 1), (12345, 67890), (size - 1, 1001)]) + reply(
        (ALLOC, [(size + 1000, 0)]))
    seeds["blocks-absurd"] = export(size, 3, 5000, 7) + reads() + reply(
        (ALLOC, [(size, 0)]))
    seeds["blocks-large"] = export(size, 65536, 1 << 25, 0xffffffff) \
        + reads() + reply((ALLOC, [(size, 0)]))
    # Direct extents requests: at the end, past it, across it.
    seeds["extents"] = export(size) + extents_step(0, size) + reply(
        (ALLOC, [(MiB, 0), (size, ZERO)])) + extents_step(size, 4096) \
        + extents_step(size - 512, 4096) + reply((ALLOC, [(512, HOLE | ZERO)]))
    # No block status, a server that fails reads, an empty export, a
    # huge one.
    seeds["no-meta"] = export(size, alloc=False) + reads()
    seeds["read-fails"] = export(size, alloc=False, fail_after=3) + reads()
    seeds["empty"] = export(0) + reads()
    seeds["huge"] = export(1 << 62, big=True) + reads() + b"".join(
        reply((ALLOC, [(1 << 30, HOLE | ZERO)])) for _ in range(8))
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
