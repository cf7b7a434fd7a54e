#!/usr/bin/env bash
# vdisk export vs qemu-img convert -O raw, same 1 GiB dynamic VHDX, same run, alternating.
# Prints MB/s (virtual bytes / wall time) medians and the ratio. Bounded: $ROUNDS rounds (9).
# Outputs go to tmpfs (/dev/shm) when it has room: on ext4 the page-cache reclaim that writing
# 1 GiB triggers lands on whichever tool runs at that moment and swamps the difference
# (measured here: ratios from 0.56x to 1.87x between identical runs).
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
cargo build --release -q --workspace
BF=target/release/bootfarm
W=$(mktemp -d /tmp/bootfarm-perf-export.XXXXXX)
O=$W
if [ "$(df --output=avail -k /dev/shm 2>/dev/null | tail -1)" -gt $((3 << 20)) ] 2>/dev/null; then O=$(mktemp -d /dev/shm/bootfarm-perf-export.XXXXXX); fi
trap 'rm -rf "$W" "$O"' EXIT
ROUNDS=${ROUNDS:-9}
# Source: 1 GiB with ~60% data in 1 MiB runs (a boot image is mostly allocated), rest holes.
make_test_vhdx "$W"
cat "$W/disk.vhdx" > /dev/null   # both read from the page cache
now() { date +%s.%N; }
ours=(); theirs=()
for round in $(seq "$ROUNDS"); do
  t0=$(now); "$BF" vdisk export "$W/disk.vhdx" -o "$O/ours.raw"; t1=$(now)
  qemu-img convert -f vhdx -O raw "$W/disk.vhdx" "$O/theirs.raw"; t2=$(now)
  cmp "$O/ours.raw" "$O/theirs.raw"
  ours+=("$(echo "1073.741824 / ($t1 - $t0)" | bc -l)")
  theirs+=("$(echo "1073.741824 / ($t2 - $t1)" | bc -l)")
  rm -f "$O/ours.raw" "$O/theirs.raw"
done
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( (ROUNDS + 1) / 2 ))p"; }
mo=$(median "${ours[@]}"); mt=$(median "${theirs[@]}")
echo "machine: $(nproc) cores, $(uname -r), $(qemu-img --version | head -1); output on $(df --output=fstype "$O" | tail -1)"
printf '%-34s %10s\n' "1 GiB dynamic VHDX -> raw file" "MB/s (median of $ROUNDS)"
printf '%-34s %10.0f\n' "bootfarm vdisk export" "$mo"
printf '%-34s %10.0f\n' "qemu-img convert -O raw" "$mt"
printf '%-34s %10.2fx\n' "ratio bootfarm / qemu-img" "$(echo "$mo / $mt" | bc -l)"
