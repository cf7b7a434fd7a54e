#!/usr/bin/env bash
# Hostile-load soak (issue #20, items 4-11), loopback only, bounded (~2 min by default): a release
# bootfarm on its defaults except a small per-target RAM tier (so the overflow file is reached
# quickly), one well-behaved client (TFTP bootstrap, HTTP range, NBD read, bytes checked) alone,
# then beside seven attacks (perf/soak.py lists them), then alone again. Prints the server's RSS
# (anonymous, RssAnon) and CPU per phase and the client's latency per phase; exits 1 when the server died, the
# well-behaved client failed, or the server's anonymous RSS grew past the bound below.
#   BASELINE_S=10 ATTACK_S=60 RECOVERY_S=15 ATTACKS=a4,a5,a6,a7,a8,a10,a11 bash perf/soak.sh
# RSS bound: the baseline's peak + what the configuration lets the attacks hold: the write caches
# in RAM (nbd.cache_ram_bytes_total_max), a5's 20 connections' reply copies
# (nbd.reply_scratch_bytes_max, 4 MiB each), 8,192 idle HTTP connections at 8 KiB, plus
# RSS_SLACK_MIB (default 96: rings, buffers, page tables).
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
need_pkgs python3:python3 bc:bc curl:curl
# PROFILE=debug measures a debug build (RSS figures hold; latency and CPU do not).
if [ "${PROFILE:-release}" = debug ]; then cargo build -q -p bootfarm; BF=$PWD/target/debug/bootfarm
else cargo build --release -q -p bootfarm; BF=$PWD/target/release/bootfarm; fi
work_dir soak
mkdir -p "$W/boot" "$W/cache"
head -c $((1 << 20)) /dev/urandom > "$W/boot/boot.bin"
# 64 MiB of text with CR, LF and CR LF: netascii has something to convert.
python3 - "$W/boot/big.txt" <<'PY'
import sys
line = b"bootfarm soak line\r\nwith a bare CR\r and a bare LF\n" * 64
with open(sys.argv[1], "wb") as f:
    while f.tell() < 64 << 20:
        f.write(line)
PY
# A 16 GiB sparse raw vdisk whose first 64 MiB are random (what the client reads and checks).
head -c $((64 << 20)) /dev/urandom > "$W/head.raw"
cp "$W/head.raw" "$W/disk.raw"
truncate -s 16G "$W/disk.raw"
RAM_TOTAL=$((256 << 20))
# The defaults need 28,744 descriptors (2 x 8192 TFTP + 8192 HTTP + 2 x 2048 NBD + workers, as
# bootfarm's start-up check counts them). Where the hard open-file limit is lower (20,000 on the
# machine perf/README.md reports), the soak halves the TFTP and HTTP totals so they fit, as that
# check's warning tells an admin to do; otherwise it keeps the defaults.
if [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge 30000 ]; then TFTP_SESSIONS=8192 HTTP_CONNS=8192
else TFTP_SESSIONS=4096 HTTP_CONNS=4096; fi
echo "descriptors: hard limit $(ulimit -Hn); tftp.sessions_max $TFTP_SESSIONS, http.connections_max $HTTP_CONNS"
cat > "$W/bootfarm.toml" <<EOF
[server]
tftp_port = 6931
http_port = 8931
nbd_port = 10931
[tftp]
root = "boot"
sessions_max = $TFTP_SESSIONS
[http]
connections_max = $HTTP_CONNS
[nbd]
cache_dir = "cache"
cache_ram_bytes_per_target = 4194304
cache_ram_bytes_total_max = $RAM_TOTAL
[[vdisk]]
name = "disk"
path = "disk.raw"
EOF
"$BF" config check "$W/bootfarm.toml" > /dev/null
"$BF" serve --config "$W/bootfarm.toml" --log warn 2> "$W/server.log" & BFPID=$!
pids+=($BFPID)
for _ in $(seq 100); do curl -sf http://127.0.0.1:8931/healthz > /dev/null && break; sleep 0.1; done
python3 perf/soak.py --tftp 6931 --http 8931 --nbd 10931 --pid "$BFPID" --vdisk disk --disk "$W/head.raw" \
  --boot "$W/boot/boot.bin" --boot-name boot.bin --text-name big.txt \
  --baseline-s "${BASELINE_S:-10}" --attack-s "${ATTACK_S:-60}" --recovery-s "${RECOVERY_S:-15}" \
  --attacks "${ATTACKS:-a4,a5,a6,a7,a8,a10,a11}" > "$W/soak.json"
curl -s http://127.0.0.1:8931/metrics | grep -E '^bootfarm_.*(refus|limit|evict|timeout|rate)' | grep -v ' 0$' > "$W/metrics.txt" || true
# SIGTERM: the server drains (shutdown_grace_ms) and exits; a hung one is killed and says so.
kill "$BFPID"; t0=$(date +%s.%N)
for _ in $(seq 300); do kill -0 "$BFPID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$BFPID" 2>/dev/null; then echo "server still running 30 s after SIGTERM: killed"; kill -9 "$BFPID"; fi
wait "$BFPID" 2>/dev/null || true
echo "server stopped $(echo "$(date +%s.%N) - $t0" | bc -l | cut -c1-4) s after SIGTERM"
python3 - "$W/soak.json" "$((RAM_TOTAL + 20 * (4 << 20) + 8192 * 8192))" "${RSS_SLACK_MIB:-96}" "$W/metrics.txt" "$W/server.log" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
ram_mib, slack = int(sys.argv[2]) / 2**20, float(sys.argv[3])  # ram_mib: every configured bound above
print("attacks:", j["attacks"])
print("%-9s %9s %9s %9s %7s | %-28s | %-28s | %-28s" % ("phase", "RSS first", "RSS max", "RSS last", "CPU s",
      "tftp n/fail p50/p99 ms", "http n/fail p50/p99 ms", "nbd n/fail p50/p99 ms"))
for ph in ("baseline", "attack", "recovery"):
    d = j["phases"][ph]
    cell = lambda k: "%d/%d %s/%s" % (d[k]["n"], d[k]["failed"], d[k]["p50_ms"], d[k]["p99_ms"])
    print("%-9s %9s %9s %9s %7s | %-28s | %-28s | %-28s" % (ph, d["rss_mib_first"], d["rss_mib_max"], d["rss_mib_last"],
          d["server_cpu_s"], cell("tftp"), cell("http"), cell("nbd")))
print("attack counters:", json.dumps(j["stats"]))
print("server metrics (non-zero refusals, limits, evictions, timeouts):")
print(open(sys.argv[4]).read().rstrip() or "  (none)")
bound = j["phases"]["baseline"]["rss_mib_max"] + ram_mib + slack
peak = max(j["phases"][p]["rss_mib_max"] for p in ("attack", "recovery"))
bad = sum(j["phases"][p][k]["failed"] for p in j["phases"] for k in ("tftp", "http", "nbd"))
ok = j["server_alive"] and bad == 0 and peak <= bound
print("RSS peak %.1f MiB, bound %.1f MiB (baseline peak + %.0f MiB of configured bounds + %.0f slack); client failures %d; server alive %s"
      % (peak, bound, ram_mib, slack, bad, j["server_alive"]))
for f in j["failures"]:
    print("  failure:", f)
if not ok:
    print("SOAK FAILED; server log tail:")
    print("".join(open(sys.argv[5]).readlines()[-30:]))
sys.exit(0 if ok else 1)
PY
