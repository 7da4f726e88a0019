#!/usr/bin/env python3
"""A minimal NBD server that lies in its block status replies.

Usage: nbd-liar.py SOCKET FILE MODE

Serves FILE read-only on the Unix socket SOCKET, one client at a time,
with structured replies and the base:allocation context (NBD protocol,
doc/proto.md: fixed newstyle negotiation, NBD_OPT_GO, simple and
structured replies).  Reads are answered truthfully; block status is
answered according to MODE:

  past-end    one data extent that runs 1 MiB past the range asked for
  short       at most 64 KiB per reply (legal: the client must ask on)
  zero-length an empty extent first
  empty       a reply with no extent at all
  twice       two replies for base:allocation to one request
  flags       the truth, with every flag bit that has no meaning set
  many        the truth, in zero ranges in extents of 256 bytes that
              alternate between data and hole: more extents in one
              reply than a client keeps
  truth       one data extent covering the range exactly
"""
import os
import socket
import struct
import sys

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
STRUCTURED_MAGIC = 0x668E33EF

OPT_ABORT, OPT_GO, OPT_STRUCTURED, OPT_SET_META = 2, 7, 8, 10
REP_ACK, REP_INFO, REP_META, REP_ERR_UNSUP = 1, 3, 4, 0x80000001
CMD_READ, CMD_DISC, CMD_FLUSH, CMD_BLOCK_STATUS = 0, 2, 3, 7
CHUNK_OFFSET_DATA, CHUNK_BLOCK_STATUS, CHUNK_ERROR = 1, 5, 0x8001
FLAG_DONE = 1
CONTEXT_ID = 1


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise EOFError
        buf += part
    return buf


def opt_reply(conn, opt, rtype, data=b""):
    conn.sendall(struct.pack(">QIII", REPLY_MAGIC, opt, rtype, len(data)) + data)


def chunk(conn, handle, ctype, payload, flags=FLAG_DONE):
    conn.sendall(struct.pack(">IHHQI", STRUCTURED_MAGIC, flags, ctype, handle,
                             len(payload)) + payload)


def negotiate(conn, size):
    conn.sendall(NBDMAGIC + struct.pack(">QH", IHAVEOPT, 3))
    recv_exact(conn, 4)                                 # client flags
    structured = meta = False
    while True:
        magic, opt, length = struct.unpack(">QII", recv_exact(conn, 16))
        data = recv_exact(conn, length)
        if magic != IHAVEOPT:
            raise EOFError
        if opt == OPT_STRUCTURED:
            structured = True
            opt_reply(conn, opt, REP_ACK)
        elif opt == OPT_SET_META:
            namelen = struct.unpack(">I", data[:4])[0]
            pos = 4 + namelen
            count = struct.unpack(">I", data[pos:pos + 4])[0]
            pos += 4
            for _ in range(count):
                qlen = struct.unpack(">I", data[pos:pos + 4])[0]
                query = data[pos + 4:pos + 4 + qlen]
                pos += 4 + qlen
                if query == b"base:allocation":
                    meta = True
                    opt_reply(conn, opt, REP_META,
                              struct.pack(">I", CONTEXT_ID) + query)
            opt_reply(conn, opt, REP_ACK)
        elif opt == OPT_GO:
            flags = 1 | 2                       # has flags, read-only
            opt_reply(conn, opt, REP_INFO, struct.pack(">HQH", 0, size, flags))
            opt_reply(conn, opt, REP_ACK)
            return structured and meta
        elif opt == OPT_ABORT:
            opt_reply(conn, opt, REP_ACK)
            raise EOFError
        else:
            opt_reply(conn, opt, REP_ERR_UNSUP)


def truth(fd, offset, length, step):
    """(length, zero?) runs of the file in blocks of step bytes."""
    runs = []
    data = os.pread(fd, length, offset)
    for pos in range(0, len(data), step):
        zero = data[pos:pos + step].count(0) == len(data[pos:pos + step])
        ln = min(step, len(data) - pos)
        if runs and runs[-1][1] == zero:
            runs[-1][0] += ln
        else:
            runs.append([ln, zero])
    return runs or [[length, False]]


def block_status(fd, offset, length, mode):
    if mode == "flags":
        entries = [(ln, 0xFFFFFFFB if zero else 0xFFFFFFF8)
                   for ln, zero in truth(fd, offset, length, 65536)]
    elif mode == "many":
        entries = []
        for ln, zero in truth(fd, offset, length, 65536):
            if not zero:
                entries.append((ln, 0))
                continue
            for i in range(0, ln, 256):
                entries.append((min(256, ln - i), 3 if i // 256 % 2 else 0))
    elif mode == "past-end":
        entries = [(length + (1 << 20), 0)]
    elif mode == "short":
        entries = [(min(length, 65536), 0)]
    elif mode == "zero-length":
        entries = [(0, 0), (length, 0)]
    elif mode == "empty":
        entries = []
    else:
        entries = [(length, 0)]
    return struct.pack(">I", CONTEXT_ID) + b"".join(
        struct.pack(">II", min(ln, 0xFFFFFFFF), fl) for ln, fl in entries)


def serve(conn, fd, size, mode):
    if not negotiate(conn, size):
        return
    while True:
        magic, flags, ctype, handle, offset, length = struct.unpack(
            ">IHHQQI", recv_exact(conn, 28))
        if magic != REQUEST_MAGIC or ctype == CMD_DISC:
            return
        if ctype == CMD_READ:
            data = os.pread(fd, length, offset)
            chunk(conn, handle, CHUNK_OFFSET_DATA,
                  struct.pack(">Q", offset) + data)
        elif ctype == CMD_BLOCK_STATUS and mode == "twice":
            chunk(conn, handle, CHUNK_BLOCK_STATUS,
                  block_status(fd, offset, length, "truth"), flags=0)
            chunk(conn, handle, CHUNK_BLOCK_STATUS,
                  block_status(fd, offset, length, "truth"))
        elif ctype == CMD_BLOCK_STATUS:
            chunk(conn, handle, CHUNK_BLOCK_STATUS,
                  block_status(fd, offset, length, mode))
        else:
            msg = b"not supported"
            chunk(conn, handle, CHUNK_ERROR,
                  struct.pack(">IH", 95, len(msg)) + msg)


def main():
    path, image, mode = sys.argv[1:4]
    fd = os.open(image, os.O_RDONLY)
    size = os.fstat(fd).st_size
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(4)
    while True:
        conn, _ = lsock.accept()
        try:
            serve(conn, fd, size, mode)
        except (EOFError, ConnectionError):
            pass
        conn.close()


if __name__ == "__main__":
    main()
