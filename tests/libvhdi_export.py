#!/usr/bin/python3
"""Export a VHD/VHDX chain to raw with python3-libvhdi (Debian), an independent reader.
Usage: libvhdi_export.py OUT NEWEST [PARENT ...]"""
import sys
import pyvhdi

out, paths = sys.argv[1], sys.argv[2:]
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
# Parents are attached base-first so each parent is complete when its child takes it.
for child, parent in reversed(list(zip(files, files[1:]))):
    child.set_parent(parent)
top = files[0]
size = top.get_media_size()
with open(out, "wb") as o:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        o.write(top.read_buffer_at_offset(n, off))
        off += n
