"""Export a VHDX (its parents found through its parent locator, as Hyper-V does) to raw with
dissect.hypervisor (PyPI), a second reader independent of python3-libvhdi and of bootfarm.
Usage: dissect_export.py OUT VHDX"""
import sys
from pathlib import Path

from dissect.hypervisor.disk.vhdx import VHDX

out, path = sys.argv[1], Path(sys.argv[2])
disk = VHDX(path)
size = disk.size
with open(out, "wb") as o:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        disk.seek(off)
        data = disk.read(n)
        if len(data) != n:
            sys.exit(f"{path}: short read at {off}: {len(data)} of {n} bytes")
        o.write(data)
        off += n
