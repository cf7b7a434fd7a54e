#!/usr/bin/env bash
# bootstorm's own CPU per boot (the client of perf/linux-replay.sh), A/B: the Linux boot trace
# (perf/traces/linux-boot.csv, --own-areas, every byte checked) replayed by $TARGETS targets
# against one bootfarm, by bootstorm binaries taking turns within each round (BS_A, BS_B, ...;
# default: this tree's release build alone). Prints per binary the median client and server
# CPU per boot over $ROUNDS rounds, and the load average (the machine is shared: compare only
# figures from one run). Ports 6971/16971/16972, clear of linux-replay.sh's.
# PERF=1: also `perf record -g` the last run of the first binary into $OUT_DIR/bootstorm.perf;
# PERF=stat: `perf stat` the last round's runs (operations, waits, faults) into $OUT_DIR.
# Usage: ROUNDS=3 TARGETS=200 BS_A=/tmp/old/bootstorm BS_B=target/release/bootstorm bash perf/bootstorm-client.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-200}
OUT_DIR=${OUT_DIR:-/tmp}
TRACE=$PWD/perf/traces/linux-boot.csv
need_pkgs qemu-img:qemu-utils
cargo build --release -q -p bootfarm -p bootstorm
BF=$PWD/target/release/bootfarm
BINS=("${BS_A:-$PWD/target/release/bootstorm}")
[ -n "${BS_B:-}" ] && BINS+=("$BS_B")
[ -n "${BS_C:-}" ] && BINS+=("$BS_C")
work_dir bootstorm-client
make_replay_disk "$W" "$TARGETS"
rm "$W/disk.raw"
mkdir -p "$W/boot" "$W/cache"
cat > "$W/bootfarm.toml" <<TOML
[server]
listen = "127.0.0.1"
tftp_port = 6971
http_port = 16971
nbd_port = 16972
steer = "cpu"
[tftp]
root = "boot"
[nbd]
cache_dir = "cache"
connections_max = 8192
targets_per_address_max = 8192
connections_per_ip_max = 8192
[[vdisk]]
name = "disk"
path = "disk.vhdx"
TOML
"$BF" serve --config "$W/bootfarm.toml" --log warn & BFP=$!; pids+=($!)
sleep 1
cat "$W/disk.vhdx" > /dev/null
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
  for b in "${!BINS[@]}"; do
    pre=()
    if [ "${PERF:-0}" = 1 ] && [ "$b" = 0 ] && [ "$round" = "$ROUNDS" ]; then
      pre=(perf record -g -o "$OUT_DIR/bootstorm.perf" --)
    elif [ "${PERF:-0}" = stat ] && [ "$round" = "$ROUNDS" ]; then
      pre=(perf stat -o "$OUT_DIR/bootstorm-$b.stat" -e task-clock,io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm,io_uring:io_uring_task_work_run,io_uring:io_uring_cqring_wait,syscalls:sys_enter_io_uring_enter,page-faults --)
    fi
    s0=$(ticks "$BFP")
    "${pre[@]}" "${BINS[$b]}" boot --bootstrap none --vdisk disk --image "$W/disk.vhdx" --trace "$TRACE" --own-areas \
      --targets "$TARGETS" --nbd 127.0.0.1:16972 --timeout-ms 15000 --duration-max-s 240 --json "$W/out.json" > "$W/out.txt" 2>&1 || true
    sleep 1
    s1=$(ticks "$BFP")
    python3 - "$W/out.json" "$b" "$((s1 - s0))" "$(getconf CLK_TCK)" "$(cut -d' ' -f1 /proc/loadavg)" >> "$W/results" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ph = {p["phase"]: p for p in d["phases"]}
done = ph.get("boot", {"completed": 0})["completed"]
corrupted = sum(p["failures"].get("corrupted", 0) for p in d["phases"])
per = done or 1
print(sys.argv[2], d["targets"] - done, corrupted, d["client_cpu_ms"] / per, int(sys.argv[3]) * 1000 / int(sys.argv[4]) / per, d["boots_per_second"], sys.argv[5])
PY
  done
done
echo "machine: $(nproc) cores, Linux $(uname -r); $TARGETS targets at once replay perf/traces/linux-boot.csv --own-areas against one bootfarm; medians of $ROUNDS alternating rounds"
python3 - "$W/results" "${BINS[@]}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"{'bootstorm':<44}{'failed':>7}{'corrupt':>8}{'client ms/boot':>15}{'srv ms/boot':>12}{'boots/s':>9}  client ms/boot by round")
for b, path in enumerate(sys.argv[2:]):
    r = [x for x in rows if x[0] == str(b)]
    med = lambda k: statistics.median(float(x[k]) for x in r)
    print(f"{path[-44:]:<44}{sum(int(x[1]) for x in r):>7}{sum(int(x[2]) for x in r):>8}{med(3):>15.2f}{med(4):>12.2f}{med(5):>9.1f}  {' '.join(f'{float(x[3]):.2f}' for x in r)}")
print("load average at each run's end:", " ".join(x[6] for x in rows))
PY
