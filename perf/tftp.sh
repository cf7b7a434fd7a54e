#!/usr/bin/env bash
# TFTP side by side, one run: bootfarm vs tftpd-hpa, atftpd and dnsmasq (Debian), the same
# bootstorm scenarios against each, alternating servers within each round, medians of $RUNS.
#   (a) one 64 MiB transfer, blksize 1468, windowsize 1/8/16/64
#   (b) 256 and 1024 targets at once, 1 MiB each, blksize 1432, no windowsize (iPXE-like)
#   (c) (b) with 256 targets and 1% loss injected by the client in both directions
# Peers are configured for storms (their defaults refuse them: dnsmasq allows 50 transfers,
# atftpd 100 threads). Bounded: every bootstorm run stops after 90 s. Usage: RUNS=3 perf/tftp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
RUNS=${RUNS:-3}
# (Port 69 is dnsmasq's below: the packages' own services must not start.)
need_pkgs /usr/sbin/atftpd:atftpd /usr/sbin/dnsmasq:dnsmasq-base
cargo build --release -q --workspace
BF=$PWD/target/release/bootfarm
BS=$PWD/target/release/bootstorm
work_dir tftp
tftpd_hpa
mkdir -p "$W/root"
head -c $((1 << 20)) /dev/urandom > "$W/root/boot.bin"
head -c $((64 << 20)) /dev/urandom > "$W/root/big.bin"
chmod 755 "$W" "$W/root"; chmod 644 "$W/root"/*

cat > "$W/bootfarm.toml" <<TOML
[server]
listen = "127.0.0.1"
tftp_port = 6901
http_port = 16901
nbd_port = 16902
# bootstorm runs on this host with its threads pinned (for bootfarm only, see run): each
# transfer stays on one core.
steer = "cpu"
[tftp]
root = "root"
sessions_max = 8192
sessions_per_ip_max = 4096
# bootstorm's targets all come from 127.0.0.1: no per-source rate limit.
requests_per_ip_per_s = 1000000
requests_per_ip_burst = 1000000
TOML
# Each server is started (and, if a storm killed it, restarted before the next run) here.
declare -A PID CRASHES=([bootfarm]=0 [tftpd-hpa]=0 [atftpd]=0 [dnsmasq]=0)
start() {
  case $1 in
    bootfarm) "$BF" serve --config "$W/bootfarm.toml" --log warn & ;;
    tftpd-hpa) "$HPA" -L -u root -a 127.0.0.1:6902 -s "$W/root" -B 1468 & ;;
    atftpd) /usr/sbin/atftpd --daemon --no-fork --user root.root --port 6903 --bind-address 127.0.0.1 --maxthread 2000 --logfile /dev/null "$W/root" 2>/dev/null & ;;
    # dnsmasq's TFTP port is fixed at 69.
    dnsmasq) /usr/sbin/dnsmasq --no-daemon --port=0 --enable-tftp --tftp-root="$W/root" --listen-address=127.0.0.1 --bind-interfaces --tftp-max=2000 --user=root --pid-file="$W/dnsmasq.pid" --log-facility=/dev/null --quiet-tftp 2>/dev/null & ;;
  esac
  PID[$1]=$!; pids+=($!)
}
for s in bootfarm tftpd-hpa atftpd dnsmasq; do start "$s"; done
BF_PID=${PID[bootfarm]}
sleep 1
declare -A PORT=([bootfarm]=6901 [tftpd-hpa]=6902 [atftpd]=6903 [dnsmasq]=69)
SERVERS=(bootfarm tftpd-hpa atftpd dnsmasq)

# run SCENARIO SERVER ARGS... -> appends "scenario server per_second p99_ms failed" to results
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat" 2>/dev/null || echo 0; }
run() {
  local sc=$1 srv=$2; shift 2
  if ! kill -0 "${PID[$srv]}" 2>/dev/null; then
    CRASHES[$srv]=$((CRASHES[$srv] + 1)); start "$srv"; sleep 0.5
  fi
  local c0; c0=$(cpu_ticks "${PID[$srv]}")
  # Pinned client threads pair with bootfarm's steering; the peers do better with the
  # scheduler free to move the client around their own threads, so they get that.
  local pin=(); [ "$srv" = bootfarm ] || pin=(--no-pin)
  "$BS" tftp --server "127.0.0.1:${PORT[$srv]}" "${pin[@]}" --duration-max-s 90 --json "$W/out.json" "$@" > /dev/null || true
  local c1; c1=$(cpu_ticks "${PID[$srv]}")
  python3 - "$W/out.json" "$sc" "$srv" "$((c1 - c0))" "$(getconf CLK_TCK)" >> "$W/results" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["phases"][0]
cpu_ms = int(sys.argv[4]) * 1000 / int(sys.argv[5])
per = cpu_ms / d["completed"] if d["completed"] else float("nan")
full = json.load(open(sys.argv[1]))
client = full["client_cpu_ms"] / d["completed"] if d["completed"] else float("nan")
print(sys.argv[2], sys.argv[3], d["per_second"], d["ms"]["p99"], d["failed"], d["seconds"], per, client)
PY
}

rss_max=0
sample_rss() { while kill -0 "$BF_PID" 2>/dev/null; do awk '/RssAnon/ {print $2}' "/proc/$BF_PID/status"; sleep 0.05; done > "$W/rss"; }

for round in $(seq "$RUNS"); do
  for w in 1 8 16 64; do
    for srv in "${SERVERS[@]}"; do run "a:64MiB-w$w" "$srv" --file big.bin --expect "$W/root/big.bin" --targets 1 --blksize 1468 --windowsize "$w"; done
  done
  for n in 256 1024; do
    for srv in "${SERVERS[@]}"; do
      if [ "$srv" = bootfarm ] && [ "$n" = 1024 ]; then sample_rss & SAMPLER=$!; fi
      run "b:${n}x1MiB" "$srv" --file boot.bin --expect "$W/root/boot.bin" --targets "$n" --blksize 1432
      if [ "$srv" = bootfarm ] && [ "$n" = 1024 ]; then kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null || true; r=$(sort -n "$W/rss" | tail -1); [ "${r:-0}" -gt "$rss_max" ] && rss_max=$r; fi
    done
  done
  for srv in "${SERVERS[@]}"; do run "c:256x1MiB-loss1%" "$srv" --file boot.bin --expect "$W/root/boot.bin" --targets 256 --blksize 1432 --loss 0.01 --seed "$round"; done
done

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); runs: $RUNS (medians)"
echo "bootfarm: $("$BF" --version); peers: $("$HPA" -V 2>&1 | head -1 | cut -d, -f1), $(/usr/sbin/atftpd --version 2>&1 | head -1), $(/usr/sbin/dnsmasq --version | head -1 | cut -d' ' -f1-3)"
python3 - "$W/results" <<'PY'
import os, sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    sc, srv, rate, p99, failed, secs, cpu, client = line.split()
    rows[(sc, srv)].append((float(rate), float(p99), int(failed), float(secs), float(cpu), float(client)))
scen = []
for sc, _ in rows:
    if sc not in scen: scen.append(sc)
print(f"{'scenario':<22}{'server':<11}{'transfers/s':>12}{'seconds':>9}{'p99 ms':>10}{'failed':>8}{'cpu ms/xfer':>12}{'client ms':>10}{'bootfarm x':>12}")
ceilings = []
for sc in scen:
    med = {srv: tuple(statistics.median(r[i] for r in v) if i != 2 else sum(r[2] for r in v) for i in range(6)) for (s, srv), v in rows.items() if s == sc}
    best_peer = max((m[0] for srv, m in med.items() if srv != "bootfarm"), default=0)
    for srv in ["bootfarm", "tftpd-hpa", "atftpd", "dnsmasq"]:
        if srv not in med: continue
        rate, p99, failed, secs, cpu, client = med[srv]
        ratio = "" if srv == "bootfarm" else f"{med['bootfarm'][0] / rate:.2f}" if rate else "inf"
        # tftpd-hpa forks a process per transfer; their CPU is not visible in the parent's.
        cpus = "n/a" if srv == "tftpd-hpa" or cpu != cpu else f"{cpu:.2f}"
        print(f"{sc:<22}{srv:<11}{rate:>12.1f}{secs:>9.2f}{p99:>10.1f}{failed:>8}{cpus:>12}{client:>10.2f}{ratio:>12}")
    if sc.startswith("b:") and best_peer:
        # The client shares the cores: even a server that cost nothing could not complete more
        # than cores / (client CPU per transfer) transfers per second.
        bound = os.cpu_count() * 1000 / med["bootfarm"][5]
        ceilings.append(f"{sc}: bootstorm's own CPU {med['bootfarm'][5]:.2f} ms/transfer caps any server at {bound:.0f} transfers/s on {os.cpu_count()} cores = {bound / best_peer:.2f}x the best peer ({best_peer:.1f}/s)")
w1 = statistics.median(r[0] for r in rows[("a:64MiB-w1", "bootfarm")])
w16 = statistics.median(r[0] for r in rows[("a:64MiB-w16", "bootfarm")])
print(f"bootfarm windowsize 16 vs 1 on one 64 MiB transfer: {w16 / w1:.2f}x")
for c in ceilings:
    print("ceiling with a zero-cost server, " + c)
PY
echo "bootfarm anonymous memory (RssAnon, max while 1024 transfers ran): $((rss_max / 1024)) MiB"
echo "server restarts after a crash: bootfarm ${CRASHES[bootfarm]}, tftpd-hpa ${CRASHES[tftpd-hpa]}, atftpd ${CRASHES[atftpd]}, dnsmasq ${CRASHES[dnsmasq]}"
