#!/usr/bin/env bash
# The iSCSI 80/20 mix's server CPU per I/O in one state of the write cache, for A/B work on
# bootfarm alone (perf/iscsi.sh is the side by side with tgt). Each run starts a server on a
# clean cache_dir, then on one initiator: a warm run of $SECS s that fills its write cache (the
# 1 GiB LUN ends about 3/4 written: 256 MiB in RAM, the rest in the overflow file), then the
# measured run of $SECS s on that same cache. FRESH=1: no warm run (the measured run starts
# with an empty cache, as a new boot does). Server CPU: utime+stime from /proc/PID/stat.
#   bash perf/iscsi-steady.sh [BIN_A [BIN_B ...]]      (default: this tree's release build)
# RUNS (default 4) alternating runs per binary; CONFIG_EXTRA: lines appended to [nbd] (e.g.
# "cache_overflow_mapped = false" to A/B one binary); PROF=1: perf record -g of the last run
# of each binary into /tmp/iscsi-steady-<n>.data. Prints each run, then the median per binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
need_pkgs qemu-img:qemu-utils bc:bc
SECS=${SECS:-4}
RUNS=${RUNS:-4}
cargo build --release -q --workspace
BS=$PWD/target/release/bootstorm
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$PWD/target/release/bootfarm")
work_dir iscsi-steady
make_test_vhdx "$W"
mkdir -p "$W/boot" "$W/cache"
cat > "$W/bf.toml" <<EOF
[server]
listen = "127.0.0.1"
iscsi_port = 32636
http_port = 32637
tftp_port = 32638
nbd_port = 32639
[tftp]
root = "boot"
[nbd]
cache_dir = "cache"
cache_ram_bytes_per_target = 268435456
cache_ram_prefault_bytes = 268435456
${CONFIG_EXTRA:-}
[iscsi]
iqn_prefix = "iqn.2026-12.org.bootfarm"
[[vdisk]]
name = "disk"
path = "disk.vhdx"
sanboot = "iscsi"
EOF
# one BIN PROFILE_OUT -> "iops mbs p50 p99 client_us srv_us"
one() {
  local bin=$1 prof=$2 p t0 t1 out ini pp=
  rm -rf "$W/cache"/*
  (cd "$W" && exec "$bin" serve --config bf.toml --log warn 2>/dev/null) & p=$!; pids+=($p)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/32636) 2>/dev/null && break; sleep 0.1; done
  ini=iqn.2026-12.org.bootstorm:steady-$RANDOM
  run() { "$BS" iscsi-bench --portal 127.0.0.1:32636 --target iqn.2026-12.org.bootfarm:disk --lun 0 --initiator "$ini" \
    --seconds "$SECS" --rw randrw --read-pct 80 --bs 65536 --qd 16; }
  [ -n "${FRESH:-}" ] || run > /dev/null
  t0=$(awk '{print $14 + $15}' "/proc/$p/stat")
  if [ -n "$prof" ]; then perf record -g -p "$p" -o "$prof" -- sleep "$SECS" > /dev/null 2>&1 & pp=$!; fi
  out=$(run)
  t1=$(awk '{print $14 + $15}' "/proc/$p/stat")
  [ -z "$pp" ] || wait "$pp"
  kill "$p"; wait "$p" 2>/dev/null || true
  echo "$out $(echo "($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / (${out%% *} * $SECS)" | bc -l | cut -c1-5)"
}
declare -A R
for r in $(seq "$RUNS"); do
  for i in "${!BINS[@]}"; do
    prof=
    if [ -n "${PROF:-}" ] && [ "$r" = "$RUNS" ]; then prof=/tmp/iscsi-steady-$i.data; fi
    line=$(one "${BINS[$i]}" "$prof")
    echo "run $r bin $i: $line (iops MB/s p50 p99 client_us server_us)"
    R[$i]+="${line##* }"$'\n'
  done
done
for i in "${!BINS[@]}"; do
  echo "bin $i ${BINS[$i]}: median server CPU $(echo -n "${R[$i]}" | sort -g | sed -n "$(( (RUNS + 1) / 2 ))p") us per I/O over $RUNS runs"
done
