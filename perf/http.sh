#!/usr/bin/env bash
# HTTP side by side, one run: bootfarm vs nginx (sendfile on) serving the same 1 GiB of bytes.
# bootfarm serves it twice: as a raw image and as a dynamic VHDX (chain lookups on every read).
#   64 KiB single-range GETs at random byte offsets, 64 keep-alive connections (wrk + Lua)
#   512-byte ranges at 512-aligned offsets (iPXE sanboot-like), 64 connections
#   whole-file GET of 1 GiB (curl)
# Alternating servers within each round, medians of $RUNS. Usage: RUNS=3 DURATION=8 perf/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
need_pkgs wrk:wrk /usr/sbin/nginx:nginx-light
cargo build --release -q --workspace
BF=$PWD/target/release/bootfarm
work_dir http
mkdir -p "$W/www" "$W/boot" "$W/nginx"
SIZE=$((1 << 30))
head -c "$SIZE" /dev/urandom > "$W/www/disk.raw"
qemu-img convert -f raw -O vhdx -o block_size=32M "$W/www/disk.raw" "$W/disk.vhdx"
chmod -R a+rX "$W"
cat > "$W/bootfarm.toml" <<TOML
[server]
listen = "127.0.0.1"
tftp_port = 6911
http_port = 8911
nbd_port = 16911
[tftp]
root = "boot"
[http]
connections_per_ip_max = 4096
[[vdisk]]
name = "raw"
path = "www/disk.raw"
[[vdisk]]
name = "vhdx"
path = "disk.vhdx"
TOML
nginx_conf "$W/nginx" 8912 "$W/www"
"$BF" serve --config "$W/bootfarm.toml" --log warn & pids+=($!)
/usr/sbin/nginx -c "$W/nginx/nginx.conf" -g 'daemon off;' & pids+=($!)
sleep 1
cat "$W/www/disk.raw" > /dev/null; cat "$W/disk.vhdx" > /dev/null
declare -A URL=([bootfarm-raw]=http://127.0.0.1:8911/vdisk/raw [bootfarm-vhdx]=http://127.0.0.1:8911/vdisk/vhdx [nginx]=http://127.0.0.1:8912/disk.raw)
SERVERS=(bootfarm-raw bootfarm-vhdx nginx)
# Same bytes everywhere before measuring.
for s in "${SERVERS[@]}"; do
  [ "$(curl -s -r 123456789-123466788 "${URL[$s]}" | md5sum)" = "$(curl -s -r 123456789-123466788 "${URL[nginx]}" | md5sum)" ] || { echo "$s serves different bytes" >&2; exit 1; }
done

wrk_run() { # scenario server len align
  SIZE=$SIZE LEN=$3 ALIGN=$4 wrk -t2 -c64 -d"${DURATION}s" --latency -s perf/range.lua "${URL[$2]}" > "$W/wrk.out"
  python3 - "$W/wrk.out" "$1" "$2" >> "$W/results" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
def ms(label):
    m = re.search(r"^\s+" + label + r"\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
sock = re.search(r"Socket errors: (.*)", t)
print(sys.argv[2], sys.argv[3], rps, ms("99%"), int(errs.group(1)) if errs else 0, "socket-errors" if sock else "-")
PY
}
whole_run() { # server
  local bps; bps=$(curl -s -o /dev/null -w '%{speed_download}' "${URL[$1]}")
  echo "c:GET-1GiB $1 $(python3 -c "print($bps / 1e6)") 0 0 -" >> "$W/results"
}
for round in $(seq "$RUNS"); do
  for s in "${SERVERS[@]}"; do wrk_run "a:64KiB-random" "$s" 65536 1; done
  for s in "${SERVERS[@]}"; do wrk_run "b:512B-aligned" "$s" 512 512; done
  for s in "${SERVERS[@]}"; do whole_run "$s"; done
done
echo "machine: $(nproc) cores, Linux $(uname -r); wrk -t2 -c64 -d${DURATION}s; runs: $RUNS (medians)"
echo "bootfarm: $("$BF" --version) ($(nproc) workers); $(/usr/sbin/nginx -v 2>&1) ($(nproc) workers, sendfile on, tcp_nodelay on)"
python3 - "$W/results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    sc, srv, rate, p99, errs, sock = line.split()
    rows[(sc, srv)].append((float(rate), float(p99), int(errs), sock))
scen = []
for sc, _ in rows:
    if sc not in scen: scen.append(sc)
print(f"{'scenario':<17}{'server':<15}{'req/s | MB/s':>14}{'p99 ms':>9}{'non-2xx':>9}{'vs nginx':>10}")
for sc in scen:
    med = {srv: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), sum(r[2] for r in v)) for (s, srv), v in rows.items() if s == sc}
    for srv in ["bootfarm-raw", "bootfarm-vhdx", "nginx"]:
        rate, p99, errs = med[srv]
        ratio = f"{rate / med['nginx'][0]:.2f}" if srv != "nginx" else ""
        p = f"{p99:.2f}" if not sc.startswith("c:") else "-"
        print(f"{sc:<17}{srv:<15}{rate:>14.1f}{p:>9}{errs:>9}{ratio:>10}")
PY
