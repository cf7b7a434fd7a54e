#!/usr/bin/env bash
# A real Linux boot replayed by $TARGETS simulated targets (default 500) at once over NBD:
# perf/traces/linux-boot.csv (the NBD requests of tests/linux_boot.rs's Debian 6.1 boot, made
# with nbd.trace_dir and `bootstorm trace convert`; ~146 I/Os, 7.5 MB read, 4.3 MB written),
# every byte checked, against three servers alternating within each round, medians of $ROUNDS
# (default 3):
#   bootfarm    the vdisk as a VHDX, a write cache per target (export vdisk@target)
#   qemu-nbd    the same VHDX, --snapshot (one temporary overlay shared by all connections),
#               -e 1000, export "disk" shared by every target
#   nbd-server  Debian's nbd-server on a raw copy (it cannot read VHDX), copyonwrite = true
#               (a diff file per connection), a process per connection
# Every target replays the trace with --own-areas: its writes and its reads of them go to its
# own area of the disk ((1 + target) x 64 MiB), so that qemu-nbd's shared overlay serves each
# target its own writes; all three servers get the same requests. The image: 64 MiB of random
# data then zeros up to (TARGETS + 1) x 64 MiB (sparse, ~31 GiB virtual for 500 targets).
# Server CPU per boot: utime + stime (+ reaped children: nbd-server's per-connection
# processes) from /proc/PID/stat around each run. bootfarm gets bootstorm pinned (it steers
# flows by CPU), the peers unpinned (their better case in perf/suite.sh).
# Bounded: each bootstorm run stops after 240 s; the whole script took 5.5 minutes here (3 rounds).
# PIN=0: bootstorm unpinned against bootfarm too, and bootfarm with steer = "hash" (on a host
# shared with other loads, pinned threads cannot move to the core another process left).
# bootfarm runs all rounds in one process, as a farm node does: a round's targets find the
# caches of the round before expired (15 s without a connection), which give their RAM back
# to the pool warm (README, "Cache RAM is recycled"), so only round 1 pays a page fault per
# 4 KiB written. PREFAULT=BYTES sets nbd.cache_ram_prefault_bytes (default 0), which commits
# that RAM at start so round 1 does not either; the per-round lines below show both.
# Usage: ROUNDS=3 TARGETS=500 [PIN=0] [PREFAULT=BYTES] bash perf/linux-replay.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-500}
TRACE=$PWD/perf/traces/linux-boot.csv
TIMEOUT_MS=${TIMEOUT_MS:-15000}
PIN=${PIN:-1}
STEER=cpu; [ "$PIN" = 1 ] || STEER=hash
need_pkgs qemu-nbd:qemu-utils nbd-server:nbd-server
cargo build --release -q -p bootfarm -p bootstorm
BF=$PWD/target/release/bootfarm
BS=$PWD/target/release/bootstorm
work_dir linux-replay
make_replay_disk "$W" "$TARGETS"
mkdir -p "$W/boot" "$W/cache"
cat > "$W/bootfarm.toml" <<TOML
[server]
listen = "127.0.0.1"
tftp_port = 6961
http_port = 16961
nbd_port = 16962
steer = "$STEER"
[tftp]
root = "boot"
[nbd]
cache_dir = "cache"
connections_max = 8192
targets_per_address_max = 8192   # every simulated target connects from 127.0.0.1
connections_per_ip_max = 8192
cache_ram_prefault_bytes = ${PREFAULT:-0}
[[vdisk]]
name = "disk"
path = "disk.vhdx"
TOML
cat > "$W/nbd-server.conf" <<CONF
[generic]
listenaddr = 127.0.0.1
port = 16964
[disk]
exportname = $W/disk.raw
copyonwrite = true
CONF
"$BF" serve --config "$W/bootfarm.toml" --log warn & BFP=$!; pids+=($!)
qemu-nbd -f vhdx --snapshot -x disk -p 16963 -b 127.0.0.1 -e 1000 --persistent "$W/disk.vhdx" & QNP=$!; pids+=($!)
nbd-server -C "$W/nbd-server.conf" -p "$W/nbd-server.pid" 2>"$W/nbd-server.log"
for _ in $(seq 50); do [ -s "$W/nbd-server.pid" ] && break; sleep 0.1; done
NSP=$(cat "$W/nbd-server.pid"); pids+=("$NSP")
sleep 1
# bootfarm opens its ports once the prefault (PREFAULT) is committed.
for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/16962) 2>/dev/null && break; sleep 0.1; done
cat "$W/disk.vhdx" > /dev/null

# CPU ticks of processes, their reaped children and their live children.
cpu_ticks() {
  local t=0 p
  for p in "$@" $(for q in "$@"; do pgrep -P "$q" || true; done); do
    t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
# run STACK PID BOOTSTORM-ARGS... -> one line in $W/results
run() {
  local stack=$1 procs=$2 c0 c1; shift 2
  c0=$(cpu_ticks "$procs")
  local pin=(); [ "$stack" = bootfarm ] && [ "$PIN" = 1 ] || pin=(--no-pin)
  "$BS" boot --bootstrap none --vdisk disk --image "$W/disk.vhdx" --trace "$TRACE" --own-areas --targets "$TARGETS" \
    "$@" "${pin[@]}" --timeout-ms "$TIMEOUT_MS" --duration-max-s 240 --json "$W/out.json" > "$W/out.txt" 2>&1 || true
  # nbd-server's per-connection processes end at the close: let them be reaped (their CPU
  # moves to the parent's cutime/cstime), and the last connections close before the next run.
  sleep 2
  c1=$(cpu_ticks "$procs")
  python3 - "$W/out.json" "$stack" "$((c1 - c0))" "$(getconf CLK_TCK)" >> "$W/results" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ph = {p["phase"]: p for p in d["phases"]}
boot = ph.get("boot", {"completed": 0, "ms": {"p99": float("nan")}})
failed = d["targets"] - boot["completed"]
corrupted = sum(p["failures"].get("corrupted", 0) for p in d["phases"])
nbytes = sum(p["bytes"] for p in d["phases"] if p["phase"] != "boot")
per = boot["completed"] or 1
cpu_ms = int(sys.argv[3]) * 1000 / int(sys.argv[4])
why = ";".join(f"{p['phase']}:{k.replace(' ', '_')}={v}" for p in d["phases"] if p["phase"] != "boot" for k, v in p["failures"].items()) or "-"
print(sys.argv[2], d["targets"], d["boots_per_second"], boot["ms"]["p99"], failed, corrupted, cpu_ms / per, d["client_cpu_ms"] / per, nbytes / per, why)
PY
}
for _ in $(seq "$ROUNDS"); do
  run bootfarm "$BFP" --nbd 127.0.0.1:16962
  run qemu-nbd "$QNP" --nbd 127.0.0.1:16963 --export shared
  run nbd-server "$NSP" --nbd 127.0.0.1:16964 --export shared
done

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); client and servers share the cores"
echo "bootfarm $("$BF" --version | cut -d' ' -f2) ($(nproc) workers); $(qemu-nbd --version | head -1); nbd-server $(dpkg-query -W -f '${Version}' nbd-server)"
echo "bootstorm boot --trace perf/traces/linux-boot.csv --own-areas, $TARGETS targets at once, every byte checked; medians of $ROUNDS alternating rounds"
echo "bootstorm against bootfarm: $([ "$PIN" = 1 ] && echo "pinned, server.steer = cpu" || echo "unpinned, server.steer = hash"); against the peers: unpinned"
python3 - "$W/results" "$(nproc)" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
stacks = []
for r in rows:
    if r[0] not in stacks: stacks.append(r[0])
col = lambda st, k: [float(r[k]) for r in rows if r[0] == st]
med = lambda st, k: statistics.median(col(st, k))
tot = lambda st, k: sum(int(r[k]) for r in rows if r[0] == st)
print(f"{'server':<12}{'targets':>8}{'boots/s':>9}{'p99 ms':>9}{'failed':>7}{'corrupt':>8}{'srv CPU ms/boot':>16}{'client ms/boot':>15}{'MB/boot':>8}{'boots/s x':>10}{'p99 x':>7}{'CPU x':>7}")
for st in stacks:
    line = f"{st:<12}{int(med(st, 1)):>8}{med(st, 2):>9.1f}{med(st, 3):>9.0f}{tot(st, 4):>7}{tot(st, 5):>8}{med(st, 6):>16.2f}{med(st, 7):>15.2f}{med(st, 8) / 1e6:>8.2f}"
    if st != "bootfarm":
        line += f"{med('bootfarm', 2) / med(st, 2):>10.2f}{med('bootfarm', 3) / med(st, 3):>7.2f}{med('bootfarm', 6) / med(st, 6):>7.2f}"
    print(line)
print("x = bootfarm's figure over the peer's (targets: boots/s x >= 3, p99 x and CPU x <= 0.33); failed/corrupt: sums over all rounds")
for st in stacks:
    if st == "bootfarm": continue
    pairs = list(zip(zip(col("bootfarm", 2), col("bootfarm", 3)), zip(col(st, 2), col(st, 3))))
    bx = [b[0] / p[0] for b, p in pairs if p[0] > 0]
    px = [b[1] / p[1] for b, p in pairs if p[1] > 0]
    if bx and px:
        print(f"  vs {st}, round by round: boots/s x {' '.join(f'{x:.2f}' for x in bx)}; p99 x {' '.join(f'{x:.2f}' for x in px)}")
b = [r for r in rows if r[0] == "bootfarm"]
print("  bootfarm, round by round: boots/s " + " ".join(r[2] for r in b) + "; server CPU ms/boot " + " ".join(f"{float(r[6]):.2f}" for r in b))
# Where the limit is: the client shares the cores, so at its own CPU per boot even a server
# costing nothing could not pass cores / client CPU boots per second.
cores = int(sys.argv[2])
client = med("bootfarm", 7)
print(f"  a zero-CPU server would reach at most {cores * 1000 / client:.0f} boots/s with this client on {cores} cores (bootstorm {client:.2f} ms/boot)")
for r in rows:
    if r[9] != "-":
        print(f"  failures in one {r[0]} run: {r[9]}")
PY
