#!/usr/bin/env bash
# A TCP server in another network namespace (a container, a server
# started with "ip netns exec", reached through a veth pair) has its end
# of the connection in that namespace's TCP tables only, not in ours.
# It is found there all the same: pack, unpack and bmap -o refuse a
# target that it has open, naming the server, its pid and the file, as
# for a server in this namespace, over IPv4 and IPv6; nothing is
# written to the refused target, and another target is written as
# before.  Needs root and network namespaces with veth pairs (else
# skipped).
srcdir=${srcdir:-$(cd "$(dirname "$0")" && pwd)}
. "$srcdir/functions.sh"
requires qemu-img qemu-io qemu-nbd ip cmp
requires_root

cd "$tmp"
ns=sparsecow-test-$$
host_if=sc$$h
ns_if=sc$$n
ip netns add "$ns" 2>/dev/null ||
  { echo "$0: SKIP: cannot make a network namespace"; exit 77; }
cleanup_fn "ip netns del $ns 2>/dev/null"
ip link add "$host_if" type veth peer name "$ns_if" 2>/dev/null ||
  { echo "$0: SKIP: cannot make a veth pair"; exit 77; }
cleanup_fn "ip link del $host_if 2>/dev/null"
ip link set "$ns_if" netns "$ns"
ip netns exec "$ns" ip link set lo up
ip link set "$host_if" up
ip netns exec "$ns" ip link set "$ns_if" up
# A /30 of the benchmarking range 198.18.0.0/15 (RFC 2544) that no other
# run of this test holds: one per pid (pid_max is at most 2^15 here, or
# two runs share one only if their pids are 2^15 apart).
off=$(( ($$ % 32768) * 4 ))
net4=198.$((18 + off / 65536)).$(( (off / 256) % 256 )).$((off % 256))
host4=${net4%.*}.$(( (off % 256) + 1 ))
srv4=${net4%.*}.$(( (off % 256) + 2 ))
ip addr add "$host4/30" dev "$host_if"
ip netns exec "$ns" ip addr add "$srv4/30" dev "$ns_if"
# A unique local IPv6 network of this pid; no duplicate address
# detection, so that the addresses work at once.
srv6=
if ip addr add "fd53:6377:$(printf %x $$)::1/64" dev "$host_if" nodad 2>/dev/null &&
   ip netns exec "$ns" ip addr add "fd53:6377:$(printf %x $$)::2/64" dev "$ns_if" nodad 2>/dev/null
then
  srv6=fd53:6377:$(printf %x $$)::2
fi

qemu-img create -q -f qcow2 img.qcow2 16M
qemu-io -f qcow2 -c "write -P 0x22 0 1M" img.qcow2 >/dev/null
qemu-img convert -O raw img.qcow2 ref.raw
cp ref.raw served.raw
cp ref.raw served.ref
# Nothing on the command line names the file, and qemu-nbd holds no
# lock on it: only its open descriptor tells.
opts="driver=raw,file.filename=$tmp/served.raw,file.locking=off"

# serve ADDRESS URI-HOST: qemu-nbd in the namespace, on ADDRESS:10809;
# sets uri and srv_pid.
serve () {
  local i
  ip netns exec "$ns" qemu-nbd -r -b "$1" -p 10809 --persistent \
    --image-opts "$opts" &
  srv_pid=$!
  cleanup_fn "kill $srv_pid 2>/dev/null; wait $srv_pid 2>/dev/null"
  uri="nbd://$2:10809"
  for ((i = 0; i < 200; i++)); do
    qemu-img info "$uri" >/dev/null 2>&1 && break
    kill -0 $srv_pid 2>/dev/null || fail "qemu-nbd on $1 exited early"
    sleep 0.05
  done
  qemu-img info "$uri" >/dev/null 2>&1 || fail "qemu-nbd on $1 does not answer"
}
port_hex=$(printf %04X 10809)
served_by () {
  local file=$1; shift
  expect_fail "^sparsecow: $file: the NBD server .* \\(pid $srv_pid\\) has it open as $tmp/$file; write to another target\$" "$@"
  grep -qF -- "$uri" "$tmp/.stderr" || fail "the refusal does not name $uri"
}

check_server () {
  local table=$1
  # Its address is the namespace's only: nothing of it is in our
  # tables.
  grep -q ":$port_hex .* 0A " "/proc/$srv_pid/net/$table" ||
    fail "qemu-nbd does not listen in its namespace's $table"
  served_by served.raw sparsecow pack -n "$uri" served.raw
  served_by served.raw sparsecow pack -f "$uri" served.raw
  served_by served.raw sparsecow unpack -n "$uri" served.raw
  served_by served.raw sparsecow bmap -f "$uri" -o served.raw
  served_by served.raw sparsecow pack -f --bmap-out served.raw "$uri" out.qcow2
  [ ! -e out.qcow2 ] || fail "a refused pack left its image"
  cmp served.ref served.raw || fail "a refused command changed the served file"
  # Another file is written as before.
  cp ref.raw other.raw
  sparsecow pack -n "$uri" other.raw || fail "pack -n $uri into other.raw failed"
  qemu-img compare -q -f raw -F qcow2 served.ref other.raw || fail "other.raw differs"
  kill $srv_pid
  wait $srv_pid 2>/dev/null || :
}

serve "$srv4" "$srv4"
check_server tcp
if [ -n "$srv6" ]; then
  serve "$srv6" "[$srv6]"
  check_server tcp6
fi
exit 0
