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
