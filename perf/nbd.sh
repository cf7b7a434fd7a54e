#!/usr/bin/env bash
# NBD side by side, one run: nbdcopy of a 1 GiB dynamic VHDX (60% random data) to null: from
# bootfarm and from qemu-nbd (-f vhdx, read-only, 8 shared connections) serving the same file.
# Alternating, medians of $ROUNDS. The random 4 KiB QD1/QD32 and mixed read/write scenarios of
# issue 6 need the write cache and a fio with its nbd engine: not measured here yet.
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
ROUNDS=${ROUNDS:-5}
export DEBIAN_FRONTEND=noninteractive
command -v nbdcopy >/dev/null || apt-get install -y -qq --no-install-recommends libnbd-bin >/dev/null
command -v qemu-nbd >/dev/null || apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
cargo build --release -q --workspace
BF=$PWD/target/release/bootfarm
W=$(mktemp -d /tmp/bootfarm-perf-nbd.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
make_test_vhdx "$W"
mkdir -p "$W/boot"
printf '[server]\ntftp_port = 6921\nhttp_port = 8921\nnbd_port = 10921\n[tftp]\nroot = "boot"\n[[vdisk]]\nname = "disk"\npath = "disk.vhdx"\n' > "$W/bootfarm.toml"
"$BF" serve --config "$W/bootfarm.toml" --log warn & pids+=($!)
qemu-nbd -f vhdx -r -x disk -p 10922 -b 127.0.0.1 -e 8 --persistent "$W/disk.vhdx" & pids+=($!)
sleep 1
cat "$W/disk.vhdx" > /dev/null
now() { date +%s.%N; }
ours=(); theirs=()
for round in $(seq "$ROUNDS"); do
  t0=$(now); nbdcopy nbd://127.0.0.1:10921/disk null:; t1=$(now)
  nbdcopy nbd://127.0.0.1:10922/disk null:; t2=$(now)
  ours+=("$(echo "1073.741824 / ($t1 - $t0)" | bc -l)")
  theirs+=("$(echo "1073.741824 / ($t2 - $t1)" | bc -l)")
done
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( (ROUNDS + 1) / 2 ))p"; }
mo=$(median "${ours[@]}"); mt=$(median "${theirs[@]}")
echo "machine: $(nproc) cores, $(uname -r), $(qemu-nbd --version | head -1), $(nbdcopy --version | head -1)"
printf '%-40s %10s\n' "nbdcopy 1 GiB dynamic VHDX -> null:" "MB/s (median of $ROUNDS)"
printf '%-40s %10.0f\n' "bootfarm (simple replies, read-only)" "$mo"
printf '%-40s %10.0f\n' "qemu-nbd -f vhdx -r -e 8" "$mt"
printf '%-40s %10.2fx\n' "ratio bootfarm / qemu-nbd" "$(echo "$mo / $mt" | bc -l)"
