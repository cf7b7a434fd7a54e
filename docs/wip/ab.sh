#!/bin/bash
# usage: ab.sh BIN [secs] [prof]  -> steady-state mix: warm run then measured run on same initiator
BIN=${1:-/work/main/target/release/bootfarm}; SECS=${2:-4}; PROF=${3:-}
BS=/work/main/target/release/bootstorm
cd /tmp/mix; rm -rf cache/*
$BIN serve --config ${CFG:-bf.toml} --log warn & P=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/32626) 2>/dev/null && break; sleep 0.1; done
ini=iqn.2026-12.org.bootstorm:ab-$RANDOM
run() { $BS iscsi-bench --portal 127.0.0.1:32626 --target iqn.2026-12.org.bootfarm:disk --lun 0 --initiator $ini --seconds $SECS --rw ${RW:-randrw} --read-pct ${PCT:-80} --bs 65536 --qd 16; }
RW=randrw PCT=${WPCT:-80} run >/dev/null
t0=$(awk '{print $14+$15}' /proc/$P/stat)
if [ -n "$PROF" ]; then perf record -g -p $P -o /tmp/mix/perf.data -- sleep $SECS >/dev/null 2>&1 & PP=$!; fi
out=$(RW=randrw PCT=${MPCT:-80} run)
t1=$(awk '{print $14+$15}' /proc/$P/stat)
[ -n "$PROF" ] && wait $PP
iops=${out%% *}
echo "$out srv_us=$(echo "($t1-$t0)*10000/($iops*$SECS)" | bc -l | cut -c1-5)"
kill $P; wait $P 2>/dev/null
