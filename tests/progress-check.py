#!/usr/bin/env python3
# Run a command that prints JSON progress on descriptor 3
# (--progress=fd:3), note when each line arrives, and judge the lines:
#   progress-check.py [--rc N] [--linear-time POINTS] [--total BYTES]
#                     [--first-below PERCENT] [--stdout-rate BYTES
#                     [--stdout-file FILE]] -- COMMAND ARGS...
# Every line is {"done":N,"total":N|null,"percent":P|null}; done never
# goes down; percent is null only while total is (a stream whose length
# is not known yet), and once known never goes down; the last line says
# 100 when the command succeeds.  --linear-time: the known percentages lie within POINTS of the
# straight line from the first of them to the last in time (the command
# must then run against something slow at an even pace, such as an
# nbdkit delay filter).  --total: the last total is exactly BYTES.
# --first-below: the first known percentage is below PERCENT.
# --stdout-rate: read the command's standard output at BYTES a second
# (into --stdout-file, or nowhere), a slow pipe to judge the pace by;
# the pace is then judged against the bytes the pipe has taken when each
# line comes (at BYTES a second, that is the time the work took), so
# that a pause of the whole machine, which stops the reader and the
# command alike, is not taken for an uneven count.  The command's exit
# status must be N (default 0).
import argparse
import json
import os
import subprocess
import sys
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--rc", type=int, default=0)
ap.add_argument("--linear-time", type=float)
ap.add_argument("--total", type=int)
ap.add_argument("--first-below", type=float)
ap.add_argument("--stdout-rate", type=float)
ap.add_argument("--stdout-file")
ap.add_argument("command", nargs="+")
args = ap.parse_args()

r, w = os.pipe()
# The write end becomes descriptor 3 of the command, and only that.
if r == 3:
    r2 = os.dup(r)
    os.close(r)
    r = r2
if w != 3:
    os.dup2(w, 3)
    os.close(w)
start = time.monotonic()
reader = None
if args.stdout_rate:
    proc = subprocess.Popen(args.command, pass_fds=(3,),
                            stdout=subprocess.PIPE)

    # Standard output is read at an even rate (bytes a second), kept in
    # --stdout-file: the command waits for the reader as for a slow
    # disk or network behind a pipe.
    taken = [0]                 # bytes the reader has taken so far

    def drain():
        out = open(args.stdout_file or os.devnull, "wb")
        while True:
            b = proc.stdout.read1(64 * 1024)
            if not b:
                break
            out.write(b)
            taken[0] += len(b)
            ahead = taken[0] / args.stdout_rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        out.close()
    reader = threading.Thread(target=drain)
    reader.start()
else:
    proc = subprocess.Popen(args.command, pass_fds=(3,))
os.close(3)

lines = []
with os.fdopen(r, "rb") as f:
    for raw in f:
        if reader:
            now = taken[0] / args.stdout_rate
        else:
            now = time.monotonic() - start
        lines.append((now, raw.decode(errors="replace")))
if reader:
    reader.join()
rc = proc.wait()


def fail(msg):
    shown = "".join("%8.3f %s" % (t, l) for t, l in lines[:300])
    sys.exit("progress-check: %s\ncommand: %s\nlines (seconds, line):\n%s"
             % (msg, " ".join(args.command), shown))


if rc != args.rc:
    fail("exit status %d, expected %d" % (rc, args.rc))
if not lines:
    fail("no progress at all")

known = []                      # (time, percent) of the known lines
last_done = -1
for t, l in lines:
    try:
        o = json.loads(l)
    except ValueError:
        fail("not JSON: %r" % l)
    if set(o) != {"done", "total", "percent"}:
        fail("unexpected members: %r" % l)
    d, tot, p = o["done"], o["total"], o["percent"]
    if d < last_done:
        fail("done goes down at %r" % l)
    last_done = d
    if tot is None:
        if p is not None or known:
            fail("a total of null after a known one, or with a percent: %r"
                 % l)
        continue
    if p is None or not 0 <= p <= 100 or d > tot:
        fail("bad percent or done past the total: %r" % l)
    if p != (100 if tot == 0 else d * 100 // tot):
        fail("percent is not done / total: %r" % l)
    if known and p < known[-1][1]:
        fail("percent goes down at %r" % l)
    known.append((t, p))

# A command that fails, or finds a difference, stops short.
if args.rc == 0 and (not known or known[-1][1] != 100):
    fail("does not end at 100")
if args.total is not None and json.loads(lines[-1][1])["total"] != args.total:
    # A null total (a stream not at its end) is never right here.
    fail("the last total is not %d" % args.total)
if args.first_below is not None and known[0][1] >= args.first_below:
    fail("starts at %d%%" % known[0][1])
if args.linear_time is not None:
    t0, t1 = known[0][0], known[-1][0]
    if len(known) < 5 or t1 - t0 < 0.5:
        fail("too few lines or too short a run (%.2f s) to judge the pace"
             % (t1 - t0))
    for t, p in known:
        expect = 100 * (t - t0) / (t1 - t0)
        if abs(p - expect) > args.linear_time:
            fail("%d%% at %.2f s where an even pace gives %.0f%%"
                 % (p, t, expect))
