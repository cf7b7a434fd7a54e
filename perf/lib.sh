# Shared by the perf scripts (sourced, not run).

# make_test_vhdx DIR: DIR/disk.vhdx, a 1 GiB dynamic VHDX with 32 MiB blocks whose content is
# 60% random 1 MiB runs (seeded, so every run and every script measures the same bytes).
make_test_vhdx() {
  python3 - "$1/src.raw" <<'PY'
import random, sys
random.seed(7)
with open(sys.argv[1], "wb") as f:
    f.truncate(1 << 30)
    for mib in range(1024):
        if random.random() < 0.6:
            f.seek(mib << 20)
            f.write(random.randbytes(1 << 20))
PY
  qemu-img convert -f raw -O vhdx -o block_size=32M "$1/src.raw" "$1/disk.vhdx"
  rm "$1/src.raw"
}

# nginx_conf DIR PORT ROOT: DIR/nginx.conf, nginx as a storm peer: one worker per core,
# sendfile, TCP_NODELAY (never a corked last segment), keep-alive without a request limit,
# serving ROOT on 127.0.0.1:PORT. Run it with: nginx -c DIR/nginx.conf -g 'daemon off;'
nginx_conf() {
  cat > "$1/nginx.conf" <<NGX
worker_processes $(nproc);
pid $1/nginx.pid;
error_log $1/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 60;
  server { listen 127.0.0.1:$2; root $3; }
}
NGX
}

# need_pkgs COMMAND:PACKAGE...: installs, in one apt-get call, the packages whose command is
# missing (COMMAND is a name looked up in PATH, or an absolute path). Installed services are
# kept from starting on their own (policy-rc.d): the scripts start every peer themselves, on
# their own ports (and there is no init here).
need_pkgs() {
  export DEBIAN_FRONTEND=noninteractive
  [ -x /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  local missing=() p c
  for p in "$@"; do
    c=${p%%:*}
    if [[ $c == /* ]]; then [ -x "$c" ] || missing+=("${p##*:}"); else command -v "$c" >/dev/null || missing+=("${p##*:}"); fi
  done
  if ((${#missing[@]})); then apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; fi
}

# work_dir NAME: a fresh folder in $W, removed at exit, after every process whose PID the
# script appends to the array pids is killed.
work_dir() {
  W=$(mktemp -d "/tmp/bootfarm-perf-$1.XXXXXX")
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"' EXIT
}

# tftpd_hpa: $HPA, tftpd-hpa's in.tftpd taken out of its package into $W (Debian's atftpd and
# tftpd-hpa packages conflict: both ship in.tftpd).
tftpd_hpa() {
  (cd "$W" && apt-get download tftpd-hpa >/dev/null 2>&1 && dpkg-deb -x tftpd-hpa_*.deb hpa)
  HPA="$W/hpa/usr/sbin/in.tftpd"
}

# make_replay_disk DIR TARGETS: DIR/disk.raw and DIR/disk.vhdx (32 MiB blocks) for the Linux
# boot replay: 64 MiB of seeded random data, then zeros up to (TARGETS + 1) x 64 MiB (sparse;
# each target's own area is (1 + target) x 64 MiB).
make_replay_disk() {
  local span=$((64 << 20))
  python3 - "$1/disk.raw" "$span" "$(( ($2 + 1) * span ))" <<'PY'
import random, sys
random.seed(18)
with open(sys.argv[1], "wb") as f:
    f.write(random.randbytes(int(sys.argv[2])))
    f.truncate(int(sys.argv[3]))
PY
  qemu-img convert -f raw -O vhdx -o block_size=32M "$1/disk.raw" "$1/disk.vhdx"
}
