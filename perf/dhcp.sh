#!/usr/bin/env bash
# ProxyDHCP side by side: bootfarm vs dnsmasq in proxy mode (Debian's dnsmasq 2.90, the common
# peer), the same `bootstorm dhcp` storm against each, alternating servers within each round,
# medians of $RUNS. A real L2 segment: three network namespaces (a bridge; the server at
# 10.78.0.2; the clients at 10.78.0.10), so DISCOVERs are true broadcasts and answers come back
# to port 68 / 4011 as on a site's segment. Scenarios, each $CLIENTS clients (default 2,000):
#   (a) arriving within 1 s, BIOS and UEFI PXE kinds alternating (UEFI asks the proxy on 4011
#       when the offer lacks option 43)
#   (b) all at once (arrival 0): the most answers/s each server gives
#   (c) bootfarm alone, (a) with all four kinds (BIOS, UEFI, HTTP Boot, iPXE)
# `rcvbuf drops`: DISCOVERs the server's kernel dropped for a full socket receive buffer.
# `cpu us/ans` is per client answered usably (a UEFI client, or any client of dnsmasq's, needs
# two exchanges: DISCOVER and the 4011 REQUEST); `cpu us/dgram` per datagram answered.
# Server CPU per answer from /proc/PID/task/*/schedstat before/after (bootstorm --server-pid).
# Both programs share the machine's cores (2 here): bootstorm's own CPU is printed beside.
# Bounded: every storm stops after 30 s. Needs root (namespaces, port 67). Usage:
#   RUNS=3 bash perf/dhcp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-2000}
need_pkgs /usr/sbin/dnsmasq:dnsmasq-base ip:iproute2
# BIN=target/debug skips the release build (a quick check of the script itself, not numbers).
BIN=${BIN:-}
if [ -z "$BIN" ]; then cargo build --release -q --workspace; BIN=target/release; fi
BF=$PWD/$BIN/bootfarm
BS=$PWD/$BIN/bootstorm
work_dir dhcp
NS=bfdhcp-$$
cleanup_ns() { for n in "$NS-srv" "$NS-cli" "$NS-br"; do ip netns del "$n" 2>/dev/null || true; done; }
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; cleanup_ns; rm -rf "$W"' EXIT
ip netns add "$NS-br"
ip -n "$NS-br" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$NS-br" link set br0 up
for h in srv:2 cli:10; do
  n=${h%%:*}; a=${h##*:}
  ip netns add "$NS-$n"
  ip -n "$NS-br" link add "v$n" type veth peer name eth0 netns "$NS-$n"
  ip -n "$NS-br" link set "v$n" master br0 up
  ip -n "$NS-$n" link set lo up
  ip -n "$NS-$n" addr add "10.78.0.$a/24" dev eth0
  ip -n "$NS-$n" link set eth0 up
  ip -n "$NS-$n" route add 255.255.255.255/32 dev eth0
done

mkdir -p "$W/boot"
cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/ipxe.efi "$W/boot/" 2>/dev/null || head -c 65536 /dev/urandom > "$W/boot/undionly.kpxe"
cat > "$W/bootfarm.toml" <<TOML
[server]
listen = "10.78.0.2"
tftp_port = 69
http_port = 8080
nbd_port = 10809
[tftp]
root = "boot"
[pxe]
enabled = true
# A storm of distinct MACs: the per-MAC limit never binds; defaults otherwise.
TOML

declare -A PID
start() {
  case $1 in
    bootfarm) ip netns exec "$NS-srv" "$BF" serve --config "$W/bootfarm.toml" --log warn & ;;
    # dnsmasq as the peer: proxy mode, one service per firmware kind, no logging per packet.
    dnsmasq) ip netns exec "$NS-srv" /usr/sbin/dnsmasq --no-daemon --port=0 --interface=eth0 --bind-interfaces \
        --dhcp-range=10.78.0.0,proxy --pxe-service=x86PC,bootfarm,undionly --pxe-service=X86-64_EFI,bootfarm,ipxe.efi \
        --user=root --pid-file="$W/dnsmasq.pid" --log-facility=/dev/null --quiet-dhcp --no-resolv --no-hosts 2>/dev/null & ;;
  esac
  PID[$1]=$!; pids+=($!)
  # Wait (10 s at most) for port 67, from this server (not a dead one's: see stop).
  for _ in $(seq 100); do
    kill -0 "${PID[$1]}" 2>/dev/null || { echo "$1 exited before binding UDP 67" >&2; exit 1; }
    ip netns exec "$NS-srv" ss -Hlun | grep -q ':67 ' && return; sleep 0.1
  done
  echo "$1 did not bind UDP 67 within 10 s" >&2; exit 1
}
# A killed io_uring process's sockets close when the kernel has torn its rings down, a moment
# after the process is gone: wait (10 s at most) until port 67 is free for the next server.
stop() {
  kill "${PID[$1]}" 2>/dev/null || true; wait "${PID[$1]}" 2>/dev/null || true
  for _ in $(seq 100); do ip netns exec "$NS-srv" ss -Hlun | grep -q ':67 ' || return 0; sleep 0.1; done
  echo "port 67 still bound 10 s after $1 stopped" >&2; exit 1
}
SERVERS=(${SERVERS:-bootfarm dnsmasq})

# Datagrams the server's namespace dropped for a full socket receive buffer (Udp RcvbufErrors).
rcvbuf_drops() { ip netns exec "$NS-srv" awk '/^Udp:/ { if (h) { for (i = 1; i <= NF; i++) if (k[i] == "RcvbufErrors") print $i } else { h = 1; for (i = 1; i <= NF; i++) k[i] = $i } }' /proc/net/snmp; }
# run SCENARIO SERVER ARGS... -> "scenario server answers/s p50 p99 failed cpu_us client_us"
run() {
  local sc=$1 srv=$2; shift 2
  start "$srv"
  local d0; d0=$(rcvbuf_drops)
  ip netns exec "$NS-cli" "$BS" dhcp --clients "$CLIENTS" --duration-max-s 30 --server-pid "${PID[$srv]}" \
    --json "$W/out.json" "$@" > "$W/out.txt" || true
  { echo "== $sc $srv"; cat "$W/out.txt"; } >> "${LOG:-/dev/null}"
  local d1; d1=$(rcvbuf_drops)
  stop "$srv"
  python3 - "$W/out.json" "$sc" "$srv" "$((d1 - d0))" >> "$W/results" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
d = j["phases"][0]
n = d["completed"] or float("nan")
print(sys.argv[2], sys.argv[3], d["per_second"], d["ms"]["p50"], d["ms"]["p99"], d["ms"]["max"], d["failed"],
      j["server_cpu_us_per_answer"] if j["server_cpu_ms"] is not None else float("nan"), j["client_cpu_ms"] * 1000 / n, j["via_4011"], sys.argv[4],
      j["server_cpu_us_per_datagram"] if j["server_cpu_ms"] is not None else float("nan"))
PY
}

for round in $(seq "$RUNS"); do
  for srv in "${SERVERS[@]}"; do run "a:${CLIENTS}-in-1s" "$srv" --arrival-ms 1000 --kinds bios,uefi --seed "$round"; done
  for srv in "${SERVERS[@]}"; do run "b:${CLIENTS}-at-once" "$srv" --arrival-ms 0 --kinds bios,uefi --seed "$round"; done
  # dnsmasq's proxy mode ignores HTTPClient: HTTP Boot and iPXE clients are bootfarm's alone.
  if [[ " ${SERVERS[*]} " == *" bootfarm "* ]]; then run "c:${CLIENTS}-4-kinds-1s" bootfarm --arrival-ms 1000 --kinds bios,uefi,http,ipxe --seed "$round"; fi
done

echo "machine: $(nproc) cores (bootstorm and the server share them), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); runs: $RUNS (medians)"
echo "bootfarm: $("$BF" --version); peer: $(/usr/sbin/dnsmasq --version | head -1 | cut -d' ' -f1-3) (proxy mode)"
python3 - "$W/results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    sc, srv, *v = line.split()
    rows[(sc, srv)].append([float(x) for x in v])
scen = list(dict.fromkeys(sc for sc, _ in rows))
print(f"{'scenario':<20}{'server':<10}{'answers/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'failed':>8}{'cpu us/ans':>11}{'client us':>10}{'via 4011':>9}{'rcvbuf drops':>13}{'cpu us/dgram':>13}")
for sc in scen:
    for srv in ["bootfarm", "dnsmasq"]:
        v = rows.get((sc, srv))
        if not v: continue
        m = [statistics.median(r[i] for r in v) for i in range(len(v[0]))]
        failed = sum(r[4] for r in v)
        print(f"{sc:<20}{srv:<10}{m[0]:>10.1f}{m[1]:>9.2f}{m[2]:>9.2f}{m[3]:>9.2f}{failed:>8.0f}{m[5]:>11.1f}{m[6]:>10.1f}{m[7]:>9.0f}{m[8]:>13.0f}{m[9]:>13.1f}")
    b, d = rows.get((sc, "bootfarm")), rows.get((sc, "dnsmasq"))
    if b and d:
        med = lambda v, i: statistics.median(r[i] for r in v)
        print(f"  {sc}: bootfarm/dnsmasq answers/s {med(b,0)/med(d,0):.2f}x, CPU per answer {med(b,5)/med(d,5):.2f}x of dnsmasq's")
PY
