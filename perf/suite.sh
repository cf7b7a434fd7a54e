#!/usr/bin/env bash
# The bootstorm scenarios side by side, one run, one table: every scenario is the same
# `bootstorm boot` command against bootfarm and against the best peer for its protocols, the
# servers alternating within each round, medians of $ROUNDS (default 3).
#   tftp      1024 targets, 256 at a time, a 1 MiB bootstrap over TFTP at blksize 1432 (lockstep,
#             iPXE): bootfarm vs dnsmasq (the fastest TFTP peer in perf/tftp.sh)
#   http      500 targets at once: 1 MiB bootstrap over HTTP + the Windows-like profile x $SCALE
#             as Range GETs on one keep-alive connection each (iPXE sanboot): bootfarm vs nginx
#             (serving the vdisk's raw export; it cannot read VHDX)
#   nbd       500 targets at once: the profile over NBD: bootfarm (a write cache per target) vs
#             qemu-nbd (-f vhdx --snapshot -e 1000: one shared overlay; bootstorm then writes to
#             per-target areas)
#   headline  $HEADLINE_TARGETS (500) targets at once: 1 MiB TFTP bootstrap + the profile over
#             NBD, against tftpd-hpa + qemu-nbd and against dnsmasq + qemu-nbd
#   iscsi     500 targets at once: the profile over iSCSI (`--disk iscsi`, one session per target
#             under its own initiator name): bootfarm (a write cache per initiator) vs tgt
#             (tgtd, a raw copy as LUN 1, written in place: bootstorm's writes go to per-target
#             areas)
#   headline-iscsi  the headline over iSCSI: 1 MiB TFTP bootstrap + the profile over iSCSI,
#             against dnsmasq + tgt
# (iscsi and headline-iscsi run when named in SCENARIOS.)
# Also measured in the same run: loopback TCP bandwidth, server and client CPU per boot.
# bootfarm runs with server.steer = "cpu" and bootstorm's engine threads pinned; the peers get
# bootstorm unpinned (--no-pin), which measured better for them.
# Bounded: every bootstorm run stops after 240 s; the whole suite takes ~5 minutes here.
# A/B of two bootfarm builds: BF_BASE=/path/to/an/older/bootfarm adds a "bootfarm-base" stack
# (its own ports and cache, the same configuration) that runs right after bootfarm in every
# scenario of every round; its ratio columns read "this build over the base".
# Usage: ROUNDS=3 SCALE=0.005 SCENARIOS="tftp http nbd headline" [BF_BASE=...] bash perf/suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. perf/lib.sh
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-0.005}
SCENARIOS=${SCENARIOS:-tftp http nbd headline}
HEADLINE_TARGETS=${HEADLINE_TARGETS:-500}
# How long a target waits for any one answer before it counts the server as gone: generous, as
# real clients are; 2 s made qemu-nbd's queued handshakes fail.
TIMEOUT_MS=${TIMEOUT_MS:-15000}
need_pkgs qemu-nbd:qemu-utils /usr/sbin/dnsmasq:dnsmasq-base /usr/sbin/nginx:nginx-light /usr/sbin/tgtd:tgt
cargo build --release -q --workspace
BF=$PWD/target/release/bootfarm
BS=$PWD/target/release/bootstorm
work_dir suite
tftpd_hpa
make_test_vhdx "$W"
mkdir -p "$W/root" "$W/www/boot" "$W/www/vdisk" "$W/nginx"
head -c $((1 << 20)) /dev/urandom > "$W/root/boot.bin"
cp "$W/root/boot.bin" "$W/www/boot/boot.bin"
"$BF" vdisk export "$W/disk.vhdx" -o "$W/www/vdisk/disk" >/dev/null
chmod -R a+rX "$W"
cat > "$W/bootfarm.toml" <<TOML
[server]
listen = "127.0.0.1"
tftp_port = 6941
http_port = 16941
nbd_port = 16942
iscsi_port = 16947
# bootstorm runs on this host with its engine threads pinned (for bootfarm only, see run):
# each target's flows stay on one core.
steer = "cpu"
[tftp]
root = "root"
sessions_max = 8192
sessions_per_ip_max = 8192
# bootstorm's targets all come from 127.0.0.1: no per-source rate limit.
requests_per_ip_per_s = 1000000
requests_per_ip_burst = 1000000
[http]
connections_per_ip_max = 8192
[nbd]
cache_dir = "cache"
connections_max = 8192
targets_per_address_max = 8192   # every simulated target connects from 127.0.0.1
connections_per_ip_max = 8192
[iscsi]
connections_max = 8192
connections_per_ip_max = 8192
[[vdisk]]
name = "disk"
path = "disk.vhdx"
TOML
nginx_conf "$W/nginx" 16943 "$W/www"
"$BF" serve --config "$W/bootfarm.toml" --log warn & BFP=$!; pids+=($!)
BASE=${BF_BASE:-}
if [ -n "$BASE" ]; then
  sed -e 's/^tftp_port = 6941/tftp_port = 6951/' -e 's/^http_port = 16941/http_port = 16951/' \
    -e 's/^nbd_port = 16942/nbd_port = 16952/' -e 's/^iscsi_port = 16947/iscsi_port = 16957/' -e 's/^cache_dir = "cache"/cache_dir = "cache-base"/' \
    "$W/bootfarm.toml" > "$W/bootfarm-base.toml"
  "$BASE" serve --config "$W/bootfarm-base.toml" --log warn & BBP=$!; pids+=($!)
fi
/usr/sbin/dnsmasq --no-daemon --port=0 --enable-tftp --tftp-root="$W/root" --listen-address=127.0.0.1 --bind-interfaces \
  --tftp-max=8192 --user=root --pid-file="$W/dnsmasq.pid" --log-facility=/dev/null --quiet-tftp 2>/dev/null & DMP=$!; pids+=($!)
"$HPA" -L -u root -a 127.0.0.1:6944 -s "$W/root" -B 1468 & HPP=$!; pids+=($!)
qemu-nbd -f vhdx --snapshot -x disk -p 16945 -b 127.0.0.1 -e 1000 --persistent "$W/disk.vhdx" & QNP=$!; pids+=($!)
/usr/sbin/nginx -c "$W/nginx/nginx.conf" -g 'daemon off;' & NGP=$!; pids+=($!)
TGP=
if [[ " $SCENARIOS " == *" iscsi "* || " $SCENARIOS " == *" headline-iscsi "* ]]; then
  # tgtd ignores SIGTERM: the exit kills it with SIGKILL, then work_dir's cleanup runs.
  trap '[ -z "$TGP" ] || kill -9 "$TGP" 2>/dev/null || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"' EXIT
  cp "$W/www/vdisk/disk" "$W/tgt.raw"
  /usr/sbin/tgtd -f --iscsi portal=127.0.0.1:16946 -C 16946 > "$W/tgtd.log" 2>&1 & TGP=$!
  sleep 1
  tgtadm -C 16946 --lld iscsi --op new --mode target --tid 1 -T iqn.2026-12.org.bootfarm:disk
  tgtadm -C 16946 --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$W/tgt.raw"
  tgtadm -C 16946 --lld iscsi --op update --mode target --tid 1 --name MaxRecvDataSegmentLength --value 262144
  tgtadm -C 16946 --lld iscsi --op bind --mode target --tid 1 -I ALL
fi
sleep 1
cat "$W/disk.vhdx" "$W/www/vdisk/disk" $([ -z "$TGP" ] || echo "$W/tgt.raw") > /dev/null

# CPU ticks of processes and all their children's threads (nginx: master + workers).
cpu_ticks() {
  local t=0 p
  for p in "$@" $(for q in "$@"; do pgrep -P "$q" || true; done); do
    t=$((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
# run SCENARIO STACK "PIDS" BOOTSTORM-ARGS... -> one line in $W/results
run() {
  local sc=$1 stack=$2 procs=$3 c0 c1; shift 3
  # shellcheck disable=SC2086
  c0=$(cpu_ticks $procs)
  # bootstorm pins its engine threads (one per core), which pairs with bootfarm's steering by
  # CPU; the peer stacks do better with the scheduler free to move the client around their
  # threads (dnsmasq + qemu-nbd: 38-45 boots/s pinned, 43-53 not), so they get that.
  local pin=(); case $stack in bootfarm*) ;; *) pin=(--no-pin) ;; esac
  "$BS" boot "$@" "${pin[@]}" --timeout-ms "$TIMEOUT_MS" --duration-max-s 240 --json "$W/out.json" > "$W/out.txt" 2>&1 || true
  # shellcheck disable=SC2086
  c1=$(cpu_ticks $procs)
  sleep 1 # let the last connections close before the next run
  python3 - "$W/out.json" "$sc" "$stack" "$((c1 - c0))" "$(getconf CLK_TCK)" >> "$W/results" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ph = {p["phase"]: p for p in d["phases"]}
boot = ph.get("boot", {"completed": 0, "ms": {"p99": float("nan")}})
failed = d["targets"] - boot["completed"]
corrupted = sum(p["failures"].get("corrupted", 0) for p in d["phases"])
nbytes = sum(p["bytes"] for p in d["phases"] if p["phase"] != "boot")
per = boot["completed"] or 1
cpu_ms = int(sys.argv[4]) * 1000 / int(sys.argv[5])
why = ";".join(f"{p['phase']}:{k.replace(' ', '_')}={v}" for p in d["phases"] if p["phase"] != "boot" for k, v in p["failures"].items()) or "-"
print(sys.argv[2], sys.argv[3], d["targets"], d["boots_per_second"], boot["ms"]["p99"], failed, corrupted, cpu_ms / per, d["client_cpu_ms"] / per, nbytes / per, why)
PY
}
BOOT=(--file boot.bin --expect "$W/root/boot.bin" --blksize 1432)
DISK=(--vdisk disk --image "$W/disk.vhdx" --scale "$SCALE")
for r in $(seq "$ROUNDS"); do
  for sc in $SCENARIOS; do
    case $sc in
      tftp)
        run tftp bootfarm "$BFP" --tftp 127.0.0.1:6941 "${BOOT[@]}" --disk none --targets 1024 --concurrency 256
        [ -z "$BASE" ] || run tftp bootfarm-base "$BBP" --tftp 127.0.0.1:6951 "${BOOT[@]}" --disk none --targets 1024 --concurrency 256
        run tftp dnsmasq "$DMP" --tftp 127.0.0.1:69 "${BOOT[@]}" --disk none --targets 1024 --concurrency 256 ;;
      http)
        run http bootfarm "$BFP" --bootstrap http --http 127.0.0.1:16941 --disk http "${BOOT[@]}" "${DISK[@]}" --targets 500
        [ -z "$BASE" ] || run http bootfarm-base "$BBP" --bootstrap http --http 127.0.0.1:16951 --disk http "${BOOT[@]}" "${DISK[@]}" --targets 500
        run http nginx "$NGP" --bootstrap http --http 127.0.0.1:16943 --disk http "${BOOT[@]}" "${DISK[@]}" --targets 500 ;;
      nbd)
        run nbd bootfarm "$BFP" --bootstrap none --nbd 127.0.0.1:16942 "${DISK[@]}" --targets 500
        [ -z "$BASE" ] || run nbd bootfarm-base "$BBP" --bootstrap none --nbd 127.0.0.1:16952 "${DISK[@]}" --targets 500
        run nbd qemu-nbd "$QNP" --bootstrap none --nbd 127.0.0.1:16945 --export shared "${DISK[@]}" --targets 500 ;;
      headline)
        run headline bootfarm "$BFP" --tftp 127.0.0.1:6941 --nbd 127.0.0.1:16942 "${BOOT[@]}" "${DISK[@]}" --targets "$HEADLINE_TARGETS"
        [ -z "$BASE" ] || run headline bootfarm-base "$BBP" --tftp 127.0.0.1:6951 --nbd 127.0.0.1:16952 "${BOOT[@]}" "${DISK[@]}" --targets "$HEADLINE_TARGETS"
        run headline tftpd-hpa+qemu-nbd "$HPP $QNP" --tftp 127.0.0.1:6944 --nbd 127.0.0.1:16945 --export shared "${BOOT[@]}" "${DISK[@]}" --targets "$HEADLINE_TARGETS"
        run headline dnsmasq+qemu-nbd "$DMP $QNP" --tftp 127.0.0.1:69 --nbd 127.0.0.1:16945 --export shared "${BOOT[@]}" "${DISK[@]}" --targets "$HEADLINE_TARGETS" ;;
      iscsi)
        run iscsi bootfarm "$BFP" --bootstrap none --disk iscsi --iscsi 127.0.0.1:16947 "${DISK[@]}" --targets 500
        [ -z "$BASE" ] || run iscsi bootfarm-base "$BBP" --bootstrap none --disk iscsi --iscsi 127.0.0.1:16957 "${DISK[@]}" --targets 500
        run iscsi tgt "$TGP" --bootstrap none --disk iscsi --iscsi 127.0.0.1:16946 --lun 1 "${DISK[@]}" --targets 500 ;;
      headline-iscsi)
        run headline-iscsi bootfarm "$BFP" --tftp 127.0.0.1:6941 --disk iscsi --iscsi 127.0.0.1:16947 "${BOOT[@]}" "${DISK[@]}" --targets "$HEADLINE_TARGETS"
        [ -z "$BASE" ] || run headline-iscsi bootfarm-base "$BBP" --tftp 127.0.0.1:6951 --disk iscsi --iscsi 127.0.0.1:16957 "${BOOT[@]}" "${DISK[@]}" --targets "$HEADLINE_TARGETS"
        run headline-iscsi dnsmasq+tgt "$DMP $TGP" --tftp 127.0.0.1:69 --disk iscsi --iscsi 127.0.0.1:16946 --lun 1 "${BOOT[@]}" "${DISK[@]}" --targets "$HEADLINE_TARGETS" ;;
      *) echo "unknown scenario $sc" >&2; exit 2 ;;
    esac
  done
done

# Loopback TCP bandwidth, same run: one stream, 4 GiB.
LOOP=$(python3 - <<'PY'
import socket, threading, time
N = 4 << 30
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def sink():
    c, _ = srv.accept(); got = 0
    while got < N:
        b = c.recv(1 << 20)
        if not b: break
        got += len(b)
t = threading.Thread(target=sink); t.start()
s = socket.create_connection(srv.getsockname()); buf = b"\0" * (1 << 20); t0 = time.time()
for _ in range(N >> 20): s.sendall(buf)
s.close(); t.join()
print(f"{N / (time.time() - t0) / 1e6:.0f}")
PY
)
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); loopback TCP (one stream) $LOOP MB/s"
[ -z "$BASE" ] || echo "bootfarm-base: $BASE ($("$BASE" --version | cut -d' ' -f2))"
echo "bootfarm $("$BF" --version | cut -d' ' -f2) ($(nproc) workers); $(/usr/sbin/dnsmasq --version | head -1 | cut -d' ' -f1-3); tftpd-hpa $(dpkg-deb -f "$W"/tftpd-hpa_*.deb Version); $(qemu-nbd --version | head -1); $(/usr/sbin/nginx -v 2>&1 | cut -d' ' -f3)"
echo "bootstorm boot, every byte checked; profile = Windows-like x $SCALE (~$(python3 -c "print(round(70000*$SCALE))") I/Os); medians of $ROUNDS alternating rounds"
echo "client engine threads pinned against bootfarm (server.steer = cpu), unpinned against the peers (their better case)"
python3 - "$W/results" "$(nproc)" "$LOOP" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
order = []
for r in rows:
    if (r[0], r[1]) not in order: order.append((r[0], r[1]))
def med(sc, st, k):
    v = [float(r[k]) for r in rows if r[0] == sc and r[1] == st]
    return statistics.median(v) if v else float("nan")
def tot(sc, st, k):
    return sum(int(r[k]) for r in rows if r[0] == sc and r[1] == st)
print(f"{'scenario':<15}{'stack':<20}{'targets':>8}{'boots/s':>9}{'p99 ms':>9}{'failed':>7}{'corrupt':>8}{'srv CPU ms/boot':>16}{'client ms/boot':>15}{'MB/boot':>8}{'boots/s x':>10}{'p99 x':>7}")
for sc, st in order:
    line = f"{sc:<15}{st:<20}{int(med(sc, st, 2)):>8}{med(sc, st, 3):>9.1f}{med(sc, st, 4):>9.0f}{tot(sc, st, 5):>7}{tot(sc, st, 6):>8}{med(sc, st, 7):>16.2f}{med(sc, st, 8):>15.2f}{med(sc, st, 9) / 1e6:>8.2f}"
    if st != "bootfarm":
        line += f"{med(sc, 'bootfarm', 3) / med(sc, st, 3):>10.2f}{med(sc, 'bootfarm', 4) / med(sc, st, 4):>7.2f}"
    print(line)
print("boots/s x = bootfarm's boots/s over the peer's; p99 x = bootfarm's p99 time-to-boot over the peer's (failed/corrupt: sums over all rounds)")
# The same ratios round by round: each bootfarm run against the peer run right after it, so a
# machine whose speed drifts over minutes (this one moves 20-30%) shows its spread.
def col(sc, st, k):
    return [float(r[k]) for r in rows if r[0] == sc and r[1] == st]
for sc, st in order:
    if st == "bootfarm": continue
    pairs = list(zip(zip(col(sc, "bootfarm", 3), col(sc, "bootfarm", 4)), zip(col(sc, st, 3), col(sc, st, 4))))
    if not pairs: continue
    bx = [b[0] / p[0] for b, p in pairs if p[0] > 0]
    px = [b[1] / p[1] for b, p in pairs if p[1] > 0]
    if bx and px:
        print(f"  {sc} vs {st}, round by round: boots/s x {' '.join(f'{x:.2f}' for x in bx)} (median {statistics.median(bx):.2f}); p99 x {' '.join(f'{x:.2f}' for x in px)} (median {statistics.median(px):.2f})")
# Where the limit is. Client and servers share the cores: at bootstorm's own CPU per boot, even
# a server that cost nothing could not go past cores / client CPU boots per second.
cores, loop = int(sys.argv[2]), float(sys.argv[3])
for sc, st in order:
    if st == "bootfarm": continue
    client, peer = med(sc, "bootfarm", 8), med(sc, st, 3)
    ceiling = cores * 1000 / client
    budget = cores * 1000 / (3 * peer) - client
    need = f"3x needs bootfarm at <= {budget:.2f} ms CPU/boot" if budget > 0 else "3x is out of reach with this client on these cores"
    print(f"  {sc} vs {st}: a zero-CPU server would reach at most {ceiling:.0f} boots/s = {ceiling / peer:.2f}x; {need} (bootfarm uses {med(sc, 'bootfarm', 7):.2f})")
for sc, st in order:
    if st == "bootfarm":
        print(f"  {sc}: bootfarm moves {med(sc, st, 3) * med(sc, st, 9) / 1e6:.0f} MB/s of boot bytes; loopback TCP carries {loop:.0f} MB/s")
for r in rows:
    if r[10] != "-":
        print(f"  failures in one {r[0]}/{r[1]} run: {r[10]}")
PY
