#!/usr/bin/env bash
# NBD side by side, one run, alternating, medians of $ROUNDS (default 3):
#   seq    nbdcopy of a 1 GiB dynamic VHDX (60% random data) to null: (holes skipped by block
#          status; nbdkit's raw copy is sparse per MiB, the VHDX per 32 MiB block)
#   seq-all the same with --no-extents: every byte read from every server
#   rr1    fio (nbd engine) 4 KiB random reads, queue depth 1
#   rr32   fio 4 KiB random reads, queue depth 32
#   mix    fio 64 KiB random 80% reads / 20% writes, queue depth 16
# Servers (all on loopback, same file or a raw copy of it):
#   bootfarm        the VHDX; writes go to the target's write cache (RAM, then overflow file)
#   qemu-nbd        -f vhdx, -r for reads; --snapshot (writes to a temp overlay) for mix; -e 8
#   nbdkit          file plugin on a raw copy (nbdkit cannot read VHDX); -r for reads, the cow
#                   filter for mix
# Each fio run lasts $SECS seconds (default 5). Prints IOPS or MB/s and p99 latency per server.
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
need_pkgs nbdcopy:libnbd-bin qemu-nbd:qemu-utils nbdkit:nbdkit fio:fio bc:bc
cargo build --release -q --workspace
BF=$PWD/target/release/bootfarm
work_dir nbd
make_test_vhdx "$W"
qemu-img convert -f vhdx -O raw "$W/disk.vhdx" "$W/disk.raw"
mkdir -p "$W/boot"
cat > "$W/bootfarm.toml" <<EOF
[server]
tftp_port = 6921
http_port = 8921
nbd_port = 10921
[tftp]
root = "boot"
[nbd]
cache_dir = "cache"
connections_per_ip_max = 8192
cache_ram_bytes_per_target = 268435456
[[vdisk]]
name = "disk"
path = "disk.vhdx"
EOF
"$BF" serve --config "$W/bootfarm.toml" --log warn & pids+=($!)
qemu-nbd -f vhdx -r -x disk -p 10922 -b 127.0.0.1 -e 8 --persistent "$W/disk.vhdx" & pids+=($!)
qemu-nbd -f vhdx --snapshot -x disk -p 10923 -b 127.0.0.1 -e 8 --persistent "$W/disk.vhdx" & pids+=($!)
nbdkit -f -r -i 127.0.0.1 -p 10924 file "$W/disk.raw" & pids+=($!)
nbdkit -f -i 127.0.0.1 -p 10925 --filter=cow file "$W/disk.raw" & pids+=($!)
sleep 1
cat "$W/disk.vhdx" "$W/disk.raw" > /dev/null

now() { date +%s.%N; }
# fio_run URI RW BS QD [MIX] -> "iops p99_us"
fio_run() {
  local extra=()
  [ -n "${5:-}" ] && extra=(--rwmixread="$5")
  fio --name=x --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" "${extra[@]}" \
    --size=1g --time_based --runtime="$SECS" --randrepeat=0 --norandommap --output-format=json 2>/dev/null |
    python3 -c '
import json, sys
t = sys.stdin.read()
j = json.loads(t[t.index("{"):])["jobs"][0]
iops = j["read"]["iops"] + j["write"]["iops"]
p = [d["clat_ns"]["percentile"].get("99.000000", 0) for d in (j["read"], j["write"]) if d["io_bytes"]]
print(f"{iops:.0f} {max(p) / 1000:.0f}")'
}

declare -A R
servers=(bootfarm qemu-nbd nbdkit)
read_uri() { case $1 in bootfarm) echo nbd://127.0.0.1:10921/disk;; qemu-nbd) echo nbd://127.0.0.1:10922/disk;; nbdkit) echo nbd://127.0.0.1:10924;; esac; }
mix_uri() { case $1 in bootfarm) echo nbd://127.0.0.1:10921/disk;; qemu-nbd) echo nbd://127.0.0.1:10923/disk;; nbdkit) echo nbd://127.0.0.1:10925;; esac; }
for round in $(seq "$ROUNDS"); do
  for s in "${servers[@]}"; do
    t0=$(now); nbdcopy "$(read_uri "$s")" null:; t1=$(now)
    R[seq,$s]+="$(echo "1073.741824 / ($t1 - $t0)" | bc -l) "
    t0=$(now); nbdcopy --no-extents "$(read_uri "$s")" null:; t1=$(now)
    R[seqall,$s]+="$(echo "1073.741824 / ($t1 - $t0)" | bc -l) "
    R[rr1,$s]+="$(fio_run "$(read_uri "$s")" randread 4k 1)|"
    R[rr32,$s]+="$(fio_run "$(read_uri "$s")" randread 4k 32)|"
    R[mix,$s]+="$(fio_run "$(mix_uri "$s")" randrw 64k 16 80)|"
  done
done

median() { sort -g | sed -n "$(( (ROUNDS + 1) / 2 ))p"; }
col() { tr '|' '\n' | grep . | cut -d' ' -f"$1" | median; }
echo "machine: $(nproc) cores, $(uname -r), $(qemu-nbd --version | head -1), $(nbdkit --version), $(fio --version)"
echo "medians of $ROUNDS alternating rounds, fio runs of ${SECS}s"
printf '%-10s %-26s %12s %12s %12s\n' scenario metric bootfarm qemu-nbd nbdkit
line() { # name metric values...
  printf '%-10s %-26s %12s %12s %12s\n' "$@"
}
seqv=(); for s in "${servers[@]}"; do seqv+=("$(printf '%s\n' ${R[seq,$s]} | median | xargs printf '%.0f')"); done
line seq "nbdcopy MB/s" "${seqv[@]}"
seqa=(); for s in "${servers[@]}"; do seqa+=("$(printf '%s\n' ${R[seqall,$s]} | median | xargs printf '%.0f')"); done
line seq-all "nbdcopy --no-extents MB/s" "${seqa[@]}"
for sc in rr1 rr32 mix; do
  iops=(); p99=()
  for s in "${servers[@]}"; do
    iops+=("$(echo "${R[$sc,$s]}" | col 1)"); p99+=("$(echo "${R[$sc,$s]}" | col 2)")
  done
  line "$sc" "IOPS" "${iops[@]}"
  line "$sc" "p99 latency us" "${p99[@]}"
  printf '%-10s %-26s %12s %12.2fx %11.2fx\n' "$sc" "ratio IOPS bootfarm/peer" "" \
    "$(echo "${iops[0]} / ${iops[1]}" | bc -l)" "$(echo "${iops[0]} / ${iops[2]}" | bc -l)"
done
printf '%-10s %-26s %12s %12.2fx %11.2fx\n' seq "ratio bootfarm/peer" "" \
  "$(echo "${seqv[0]} / ${seqv[1]}" | bc -l)" "$(echo "${seqv[0]} / ${seqv[2]}" | bc -l)"
printf '%-10s %-26s %12s %12.2fx %11.2fx\n' seq-all "ratio bootfarm/peer" "" \
  "$(echo "${seqa[0]} / ${seqa[1]}" | bc -l)" "$(echo "${seqa[0]} / ${seqa[2]}" | bc -l)"
