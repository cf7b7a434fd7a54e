#!/bin/sh
# Builds a Linux vdisk from a root file system: a folder or a tarball (.tar, .tar.gz, .tar.xz,
# .tar.zst) becomes an ext4 file system in a raw file (mkfs.ext4 -d, no mount, no root needed
# for a folder), then a dynamic VHDX base image (`bootfarm vdisk merge`). New versions on top
# are made as for any vdisk: `bootfarm vdisk new-version BASE.vhdx -o V2.avhdx`.
#   linux-vdisk.sh ROOTFS OUT.vhdx [SIZE]      SIZE for truncate (default 2G)
# Environment: BOOTFARM (default: bootfarm on PATH), LABEL (default "bootfarm-root").
# Debian: apt install e2fsprogs (and tar with xz-utils/zstd for compressed tarballs).
# Extract a tarball as root so that file owners are kept (mkfs.ext4 -d copies them).
set -eu
src=${1:?usage: linux-vdisk.sh ROOTFS_DIR_OR_TARBALL OUT.vhdx [SIZE]}
out=${2:?usage: linux-vdisk.sh ROOTFS_DIR_OR_TARBALL OUT.vhdx [SIZE]}
size=${3:-2G}
bootfarm=${BOOTFARM:-bootfarm}
command -v mkfs.ext4 >/dev/null 2>&1 || PATH=$PATH:/sbin:/usr/sbin
command -v mkfs.ext4 >/dev/null 2>&1 || { echo "linux-vdisk.sh: mkfs.ext4 not found (apt install e2fsprogs)" >&2; exit 2; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/linux-vdisk.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if [ -d "$src" ]; then
	dir=$src
elif [ -f "$src" ]; then
	dir=$tmp/root
	mkdir "$dir"
	tar -xf "$src" -C "$dir" --numeric-owner || { echo "linux-vdisk.sh: cannot extract $src" >&2; exit 2; }
else
	echo "linux-vdisk.sh: $src is neither a folder nor a tarball" >&2
	exit 2
fi
truncate -s "$size" "$tmp/root.raw"
# 4 KiB blocks match the write cache's blocks; no lazy init: every byte is written here,
# not by the first boot through a server's write cache.
mkfs.ext4 -q -F -L "${LABEL:-bootfarm-root}" -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 -d "$dir" "$tmp/root.raw"
"$bootfarm" vdisk merge "$tmp/root.raw" -o "$out"
echo "linux-vdisk.sh: $out ($size) from $src"
