# The content digest of sparsecow(1), DIGEST, recomputed from raw guest
# bytes: python3 verify-digest.py RAW-FILE BLOCK-SIZE prints it in hex.
# The oracle of tests/verify-digest.sh: it shares no code with sparsecow.
import hashlib
import struct
import sys

path, block = sys.argv[1], int(sys.argv[2])
outer = hashlib.sha256()
size = 0
zero_run = 0
zeros = bytes(block)
with open(path, 'rb') as f:
    while True:
        b = f.read(block)
        if not b:
            break
        size += len(b)
        if b == zeros[:len(b)]:
            zero_run += 1
            continue
        if zero_run:
            outer.update(b'\x00' + struct.pack('>Q', zero_run))
            zero_run = 0
        outer.update(b'\x01' + hashlib.sha256(b).digest())
if zero_run:
    outer.update(b'\x00' + struct.pack('>Q', zero_run))
outer.update(struct.pack('>QI', size, block))
print(outer.hexdigest())
