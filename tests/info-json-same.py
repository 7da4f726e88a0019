#!/usr/bin/env python3
# info-json-same.py QEMU.json SPARSECOW.json: exit 0 when every member
# qemu-img info --output=json printed (an image, or a --backing-chain
# array) is in sparsecow's output with the same value and type, and
# sparsecow adds nothing but its own "sparsecow" member; else an
# AssertionError names the first difference.
import json, sys
q = json.load(open(sys.argv[1]))
s = json.load(open(sys.argv[2]))
def image(a, b, where):
    assert isinstance(b, dict), "%s: not an object" % where
    extra = set(b) - set(a) - {"sparsecow"}
    assert not extra, "%s: members qemu-img does not print: %s" % (where, extra)
    for k in a:
        assert k in b, "%s: no %s" % (where, k)
        same(a[k], b[k], where + "." + k)
def same(a, b, where):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), \
            "%s: %r, qemu-img %r" % (where, b, a)
        for k in a:
            same(a[k], b[k], where + "." + k)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), \
            "%s: %r, qemu-img %r" % (where, b, a)
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, "%s[%d]" % (where, i))
    else:
        assert a == b and type(a) == type(b), \
            "%s: sparsecow %r, qemu-img %r" % (where, b, a)
if isinstance(q, list):
    assert isinstance(s, list) and len(q) == len(s), "chain lengths differ"
    for i, (a, b) in enumerate(zip(q, s)):
        image(a, b, "[%d]" % i)
else:
    image(q, s, "")
