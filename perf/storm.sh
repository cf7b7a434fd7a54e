#!/usr/bin/env bash
# The headline boot storm, side by side in one run: $TARGETS targets (default 500) booting at
# once, each a 1 MiB TFTP bootstrap at blksize 1432 (iPXE-like, lockstep) then the scaled
# Windows-like boot profile (bootstorm's built-in, x $SCALE, default 0.005: ~350 I/Os, 65%
# reads) over NBD, every byte checked. Against:
#   bootfarm    TFTP + NBD (export vdisk@mac: a write cache per target)
#   peer stack  tftpd-hpa (Debian) + qemu-nbd -f vhdx --snapshot -e 1000 (one shared overlay;
#               bootstorm then writes to per-target areas so its checks still hold)
# Alternating, medians of $ROUNDS (default 3). Also measured in the same run: loopback TCP
# bandwidth, server CPU per boot and bytes per boot, to say where the limit is.
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-500}
SCALE=${SCALE:-0.005}
# How long a target waits for any one answer (greeting, reply, TFTP block) before it counts the
# server as gone: generous, as real NBD clients are; 2 s made qemu-nbd's queued handshakes fail.
TIMEOUT_MS=${TIMEOUT_MS:-15000}
export DEBIAN_FRONTEND=noninteractive
[ -x /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
command -v qemu-nbd >/dev/null || apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
cargo build --release -q --workspace
BF=$PWD/target/release/bootfarm
BS=$PWD/target/release/bootstorm
W=$(mktemp -d /tmp/bootfarm-perf-storm.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
(cd "$W" && apt-get download tftpd-hpa >/dev/null 2>&1 && dpkg-deb -x tftpd-hpa_*.deb hpa)
HPA="$W/hpa/usr/sbin/in.tftpd"
make_test_vhdx "$W"
mkdir -p "$W/root"
head -c $((1 << 20)) /dev/urandom > "$W/root/boot.bin"
chmod 755 "$W" "$W/root"; chmod 644 "$W/root"/*
cat > "$W/bootfarm.toml" <<TOML
[server]
tftp_port = 6931
http_port = 16931
nbd_port = 16932
[tftp]
root = "root"
sessions_max = 8192
sessions_per_ip_max = 8192
[nbd]
cache_dir = "cache"
connections_max = 8192
[[vdisk]]
name = "disk"
path = "disk.vhdx"
TOML
declare -A PID
start() {
  case $1 in
    bootfarm) "$BF" serve --config "$W/bootfarm.toml" --log warn & PID[bootfarm]=$!; pids+=($!) ;;
    peers)
      "$HPA" -L -u root -a 127.0.0.1:6933 -s "$W/root" -B 1468 & PID[peers]=$!; pids+=($!)
      qemu-nbd -f vhdx --snapshot -x disk -p 16934 -b 127.0.0.1 -e 1000 --persistent "$W/disk.vhdx" & PID[qnbd]=$!; pids+=($!) ;;
  esac
}
start bootfarm; start peers
sleep 1
cat "$W/disk.vhdx" > /dev/null

cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
run() {
  local who=$1 c0 c1
  local procs=("${PID[bootfarm]}"); [ "$who" = peers ] && procs=("${PID[peers]}" "${PID[qnbd]}")
  c0=$(cpu_ticks "${procs[@]}")
  if [ "$who" = bootfarm ]; then
    set -- --tftp 127.0.0.1:6931 --nbd 127.0.0.1:16932
  else
    set -- --tftp 127.0.0.1:6933 --nbd 127.0.0.1:16934 --export shared
  fi
  "$BS" boot "$@" --file boot.bin --expect "$W/root/boot.bin" --blksize 1432 --vdisk disk --image "$W/disk.vhdx" \
    --scale "$SCALE" --targets "$TARGETS" --timeout-ms "$TIMEOUT_MS" --duration-max-s 240 --json "$W/out.json" > "$W/out.txt" 2>&1 || true
  c1=$(cpu_ticks "${procs[@]}")
  python3 - "$W/out.json" "$who" "$((c1 - c0))" "$(getconf CLK_TCK)" >> "$W/results" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ph = {p["phase"]: p for p in d["phases"]}
boot = ph.get("boot", {"completed": 0, "ms": {"p99": float("nan")}})
failed = d["targets"] - boot["completed"]
corrupted = sum(p["failures"].get("corrupted", 0) for p in d["phases"])
nbytes = sum(p["bytes"] for p in d["phases"] if p["phase"] != "boot")
cpu_ms = int(sys.argv[3]) * 1000 / int(sys.argv[4])
per = boot["completed"] or 1
why = ";".join(f"{p['phase']}:{k.replace(' ', '_')}={v}" for p in d["phases"] if p["phase"] != "boot" for k, v in p["failures"].items()) or "-"
print(sys.argv[2], d["boots_per_second"], boot["ms"]["p99"], failed, corrupted, cpu_ms / per, nbytes / per, d["client_cpu_ms"] / per, why)
PY
}
for r in $(seq "$ROUNDS"); do run bootfarm; run peers; done

# Loopback TCP bandwidth, same run: one stream, 4 GiB.
LOOP=$(python3 - <<'PY'
import socket, threading, time
N = 4 << 30
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def sink():
    c, _ = srv.accept(); got = 0
    while got < N:
        b = c.recv(1 << 20)
        if not b: break
        got += len(b)
t = threading.Thread(target=sink); t.start()
s = socket.create_connection(srv.getsockname()); buf = b"\0" * (1 << 20); t0 = time.time()
for _ in range(N >> 20): s.sendall(buf)
s.close(); t.join()
print(f"{N / (time.time() - t0) / 1e6:.0f}")
PY
)
echo "machine: $(nproc) cores, $(uname -r); $(qemu-nbd --version | head -1); tftpd-hpa $(dpkg-deb -f "$W"/tftpd-hpa_*.deb Version)"
echo "$TARGETS targets at once: 1 MiB TFTP bootstrap (blksize 1432, lockstep) + Windows-like profile x $SCALE over NBD; medians of $ROUNDS"
python3 - "$W/results" "$LOOP" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(who, k):
    v = [float(r[k]) for r in rows if r[0] == who]
    return statistics.median(v) if v else float("nan")
print(f"{'stack':<24}{'boots/s':>9}{'p99 boot ms':>13}{'failed':>8}{'corrupt':>8}{'server CPU ms/boot':>20}{'client CPU ms/boot':>20}{'MB/boot':>9}")
for who, name in (("bootfarm", "bootfarm (TFTP + NBD)"), ("peers", "tftpd-hpa + qemu-nbd")):
    print(f"{name:<24}{med(who,1):>9.1f}{med(who,2):>13.0f}{med(who,3):>8.0f}{med(who,4):>8.0f}{med(who,5):>20.2f}{med(who,7):>20.2f}{med(who,6)/1e6:>9.2f}")
for r in rows:
    if r[8] != "-":
        print(f"  failures in one {r[0]} run: {r[8]}")
b, p = med("bootfarm", 1), med("peers", 1)
print(f"ratio boots/s bootfarm/peers: {b / p:.2f}x   p99 bootfarm/peers: {med('bootfarm',2) / med('peers',2):.2f}")
loop = float(sys.argv[2])
print(f"loopback TCP, one stream: {loop:.0f} MB/s; bootfarm moves {b * med('bootfarm',6) / 1e6:.0f} MB/s of boot bytes")
PY
