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
