#!/usr/bin/env bash
# iSCSI side by side, one run, the targets alternating, medians of $ROUNDS (default 3):
#   rr1     4 KiB random reads, queue depth 1
#   rr32    4 KiB random reads, queue depth 32
#   seq     1 MiB sequential reads, queue depth 4
#   seq128  128 KiB sequential reads, queue depth 8 (tgt answers 1 MiB reads slowly, see README)
#   mix     64 KiB random, 80% reads / 20% writes, queue depth 16, one initiator in every
#           round and in an unmeasured warm-up run (3 x SECS) before the first: its write cache
#           holds the earlier runs' writes (kept between rounds: cache_keep_after_disconnect_ms
#           is 10 min here), the steady state that tgt, writing into its one raw file in place,
#           is always in
#   mixfresh the same load from a new initiator each round: an empty write cache, its RAM and
#           overflow file written for the first time (for tgt the same load as mix)
# Load: `bootstorm iscsi-bench` (one session, fixed queue depth, p50/p99 per command; Debian's
# fio has no libiscsi engine) for every scenario, and libiscsi's iscsi-perf (an independent
# initiator, reads only, IOPS only) for rr32 and seq as a cross-check.
# Targets (loopback, the same bytes):
#   bootfarm  the 1 GiB dynamic VHDX (32 MiB blocks, 60% random data) as LUN 0; writes go to the
#             initiator's write cache (RAM)
#   tgt       tgtd (Debian) with a raw copy of it as LUN 1 (tgt cannot read VHDX; its LUN 0 is
#             the controller), MaxRecvDataSegmentLength raised to bootfarm's 256 KiB
# The floor (every scenario but mixfresh): perf/iscsi-floor.c, a target that does nothing but
# answer (one poll, one recv and one sendmsg per batch of commands; READs sent from a mapping
# of the raw copy, WRITEs written into it in place as tgt writes them), run in every round
# beside the two: what any target pays per I/O on this machine for the sockets, the sleeps and
# wake-ups and the bytes it moves. FLOOR=0 leaves it out.
# Server CPU per I/O: the server's utime+stime (/proc/PID/stat, all threads) over the run's
# I/Os. Each run lasts $SECS s (default 5). Client and servers share this machine's cores.
# bootfarm's write cache: CACHE_RAM bytes of RAM per initiator (default 256 MiB, then its
# overflow file), PREFAULT bytes of that RAM committed at start (nbd.cache_ram_prefault_bytes,
# default 0).
# PROF=1: perf record -g of each server in the last round, into /tmp/iscsi-SERVER-SCENARIO.data.
# Usage: ROUNDS=3 SECS=5 [SERVERS="bootfarm tgt"] [SCENARIOS="mix"] [CACHE_RAM=..] [PREFAULT=..] bash perf/iscsi.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
need_pkgs iscsi-perf:libiscsi-bin /usr/sbin/tgtd:tgt qemu-img:qemu-utils bc:bc cc:gcc
# PROFILE=debug: the debug build (to try the script; numbers come from release).
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then cargo build --release -q --workspace; else cargo build -q --workspace; fi
BF=$PWD/target/$PROFILE/bootfarm
BS=$PWD/target/$PROFILE/bootstorm
work_dir iscsi
# tgtd ignores SIGTERM: the exit kills it with SIGKILL before work_dir's own cleanup.
TGP=
trap '[ -z "$TGP" ] || kill -9 "$TGP" 2>/dev/null || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"' EXIT
make_test_vhdx "$W"
qemu-img convert -f vhdx -O raw "$W/disk.vhdx" "$W/disk.raw"
PREFIX=iqn.2026-12.org.bootfarm
TGT_PORT=32615 TGT_CTL=1515 BF_PORT=32616 FL_PORT=32614
SERVERS=${SERVERS:-bootfarm tgt}
# SCENARIOS: a subset of "rr1 rr32 seq seq128 mix mixfresh" (iscsi-perf runs with rr32 and seq).
SCENARIOS=${SCENARIOS:-rr1 rr32 seq seq128 mix mixfresh}

mkdir -p "$W/boot"
cat > "$W/bootfarm.toml" <<EOF
[server]
listen = "127.0.0.1"
tftp_port = 32618
http_port = 32617
nbd_port = 32619
iscsi_port = $BF_PORT
[tftp]
root = "boot"
[nbd]
cache_dir = "cache"
cache_ram_bytes_per_target = ${CACHE_RAM:-268435456}
cache_ram_prefault_bytes = ${PREFAULT:-0}
cache_keep_after_disconnect_ms = 600000
[iscsi]
iqn_prefix = "$PREFIX"
[[vdisk]]
name = "disk"
path = "disk.vhdx"
sanboot = "iscsi"
EOF
if [[ " $SERVERS " == *" bootfarm "* ]]; then
  "$BF" serve --config "$W/bootfarm.toml" --log warn & BFP=$!; pids+=($!)
fi
if [[ " $SERVERS " == *" tgt "* ]]; then
  /usr/sbin/tgtd -f --iscsi portal=127.0.0.1:$TGT_PORT -C $TGT_CTL > "$W/tgtd.log" 2>&1 & TGP=$!; pids+=($!)
  sleep 1
  T=(tgtadm -C $TGT_CTL --lld iscsi)
  "${T[@]}" --op new --mode target --tid 1 -T "$PREFIX:disk"
  "${T[@]}" --op new --mode logicalunit --tid 1 --lun 1 -b "$W/disk.raw"
  "${T[@]}" --op update --mode target --tid 1 --name MaxRecvDataSegmentLength --value 262144
  "${T[@]}" --op bind --mode target --tid 1 -I ALL
fi
FLOOR=${FLOOR:-1}
if [ "$FLOOR" = 1 ]; then
  cc -O2 -Wall -o "$W/iscsi-floor" perf/iscsi-floor.c
  "$W/iscsi-floor" $FL_PORT "$W/disk.raw" & FLP=$!; pids+=($!)
fi
pid_of() { case $1 in bootfarm) echo "$BFP";; tgt) echo "$TGP";; floor) echo "$FLP";; esac; }
lun_of() { case $1 in bootfarm|floor) echo 0;; tgt) echo 1;; esac; }
port_of() { case $1 in bootfarm) echo "$BF_PORT";; tgt) echo "$TGT_PORT";; floor) echo "$FL_PORT";; esac; }
for s in $SERVERS $([ "$FLOOR" = 0 ] || echo floor); do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$(port_of "$s")") 2>/dev/null && break; sleep 0.1; done
done
cat "$W/disk.vhdx" "$W/disk.raw" > /dev/null

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
declare -A R
# bench SERVER SCENARIO ARGS... -> R[SCENARIO,SERVER] += "iops mbs p50 p99 client_us srv_us|"
bench() {
  local s=$1 sc=$2 c0 c1 out pp= ini; shift 2
  ini=iqn.2026-12.org.bootstorm:perf-$sc
  [ "$sc" != mixfresh ] || ini+=-$round
  c0=$(ticks "$(pid_of "$s")")
  if [ -n "${PROF:-}" ] && [ "$round" = "$ROUNDS" ]; then
    perf record -g -p "$(pid_of "$s")" -o "/tmp/iscsi-$s-$sc.data" -- sleep "$SECS" > /dev/null 2>&1 & pp=$!
  fi
  out=$("$BS" iscsi-bench --portal "127.0.0.1:$(port_of "$s")" --target "$PREFIX:disk" --lun "$(lun_of "$s")" \
    --initiator "$ini" --seconds "$SECS" "$@")
  c1=$(ticks "$(pid_of "$s")")
  [ -z "$pp" ] || wait "$pp"
  # Server CPU in microseconds per I/O: ticks over the run's I/Os (iops x seconds).
  local srv
  srv=$(echo "($c1 - $c0) * 1000000 / $HZ / (${out%% *} * $SECS)" | bc -l)
  echo "bench $s $sc: $out (iops MB/s p50 p99 client_us) server_us ${srv:0:6}" >&2
  R[$sc,$s]+="$out $srv|"
}
# perf_run SERVER SCENARIO IPERF-ARGS... -> R[SCENARIO-iscsi-perf,SERVER] += "iops|"
perf_run() {
  local s=$1 sc=$2 iops; shift 2
  iops=$( (timeout $((SECS + 20)) iscsi-perf -i "iqn.2026-12.org.bootstorm:iscsi-perf" -t "$SECS" "$@" \
    "iscsi://127.0.0.1:$(port_of "$s")/$PREFIX:disk/$(lun_of "$s")" 2>&1 || true) | tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}' || true)
  echo "iscsi-perf $s $sc: ${iops:-none (timed out)}" >&2
  R[$sc-iscsi-perf,$s]+="${iops:-0}|"
}
# mix is the steady state: one unmeasured run of 3 x SECS per target first fills the initiator's
# write cache (bootfarm: about 99% of the blocks the load writes are in it afterwards, so the
# rounds' writes land on blocks it holds) or the raw file's page cache (tgt, the floor), as the
# rounds after it find them.
if [[ " $SCENARIOS " == *" mix "* ]]; then
  for s in $SERVERS $([ "$FLOOR" = 0 ] || echo floor); do
    "$BS" iscsi-bench --portal "127.0.0.1:$(port_of "$s")" --target "$PREFIX:disk" --lun "$(lun_of "$s")" \
      --initiator iqn.2026-12.org.bootstorm:perf-mix --seconds $((3 * SECS)) --rw randrw --read-pct 80 --bs 65536 --qd 16 > /dev/null
  done
fi
for round in $(seq "$ROUNDS"); do
  for s in $SERVERS; do
    has() { [[ " $SCENARIOS " == *" $1 "* ]]; }
    if has rr1; then bench "$s" rr1 --rw randread --bs 4096 --qd 1; fi
    if has rr32; then bench "$s" rr32 --rw randread --bs 4096 --qd 32; fi
    if has seq; then bench "$s" seq --rw read --bs 1048576 --qd 4; fi
    if has seq128; then bench "$s" seq128 --rw read --bs 131072 --qd 8; fi
    if has mix; then bench "$s" mix --rw randrw --read-pct 80 --bs 65536 --qd 16; fi
    if has mixfresh; then bench "$s" mixfresh --rw randrw --read-pct 80 --bs 65536 --qd 16; fi
    if has rr32; then perf_run "$s" rr32 -r -m 32 -b 8; fi
    if has seq; then perf_run "$s" seq -m 4 -b 2048; fi
  done
  if [ "$FLOOR" = 1 ]; then
    if has rr1; then bench floor rr1 --rw randread --bs 4096 --qd 1; fi
    if has rr32; then bench floor rr32 --rw randread --bs 4096 --qd 32; fi
    if has seq; then bench floor seq --rw read --bs 1048576 --qd 4; fi
    if has seq128; then bench floor seq128 --rw read --bs 131072 --qd 8; fi
    if has mix; then bench floor mix --rw randrw --read-pct 80 --bs 65536 --qd 16; fi
  fi
done

median() { sort -g | sed -n "$(( (ROUNDS + 1) / 2 ))p"; }
col() { tr '|' '\n' | grep . | cut -d' ' -f"$1" | median; }
set -- $SERVERS
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); client and servers share the cores"
echo "bootfarm $("$BF" --version | cut -d' ' -f2) ($(nproc) workers); tgt $(dpkg-query -W -f '${Version}' tgt); libiscsi-bin $(dpkg-query -W -f '${Version}' libiscsi-bin)"
echo "medians of $ROUNDS alternating rounds, runs of ${SECS}s; load: bootstorm iscsi-bench (one session), iscsi-perf where named"
printf '%-8s %-30s' scenario metric; for s in "$@"; do printf ' %12s' "$s"; done; printf ' %12s\n' "ratio"
line() { # scenario metric column [lower-is-better]
  local sc=$1 m=$2 k=$3 v=() s
  for s in $SERVERS; do v+=("$(echo "${R[$sc,$s]:-}" | col "$k")"); done
  printf '%-8s %-30s' "$sc" "$m"; for x in "${v[@]}"; do printf ' %12.1f' "${x:-0}"; done
  if ((${#v[@]} == 2)) && [ -n "${v[1]}" ] && [ "$(echo "${v[1]} > 0" | bc)" = 1 ]; then
    printf ' %11.2fx' "$(echo "${v[0]} / ${v[1]}" | bc -l)"
  fi
  echo
}
for sc in $SCENARIOS; do
  line $sc "IOPS" 1
  [[ $sc == seq* ]] && line $sc "MB/s" 2
  line $sc "p50 latency us" 3
  line $sc "p99 latency us" 4
  line $sc "server CPU us/IO" 6
  line $sc "client CPU us/IO" 5
done
if [[ " $SCENARIOS " == *" rr32 "* ]]; then line rr32-iscsi-perf "IOPS (iscsi-perf)" 1; fi
if [[ " $SCENARIOS " == *" seq "* ]]; then line seq-iscsi-perf "IOPS (iscsi-perf, 1 MiB)" 1; fi
for sc in rr1 rr32 seq seq128 mix; do
  [ -n "${R[$sc,floor]:-}" ] || continue
  fl=$(echo "${R[$sc,floor]}" | col 6)
  printf '%-8s %-30s %12.1f   (perf/iscsi-floor.c: answers, nothing else)\n' "$sc-floor" "server CPU us/IO" "$fl"
  printf '%-8s %-30s %12.1f   p50 %s us, p99 %s us\n' "$sc-floor" "IOPS" "$(echo "${R[$sc,floor]}" | col 1)" \
    "$(echo "${R[$sc,floor]}" | col 3)" "$(echo "${R[$sc,floor]}" | col 4)"
  if [ -n "${R[$sc,tgt]:-}" ]; then
    t=$(echo "${R[$sc,tgt]}" | col 6)
    echo "$sc: one third of tgt's server CPU per I/O is $(echo "$t / 3" | bc -l | cut -c1-5) us; the floor is $(echo "$fl / $t" | bc -l | cut -c1-4) of tgt's"
  fi
done
echo "ratio = ${1} over ${2:-}: for IOPS and MB/s higher is better, for latency and CPU lower"
