#!/bin/sh
# Builds an initramfs with bootfarm's /init (contrib/initramfs/init): a kernel's modules for
# the network card, NBD, the root file system and overlayfs (with their dependencies per
# modules.dep), busybox, nbd-client and the libraries they link.
#   build.sh OUT.img [MODULES_DIR]     e.g. build.sh /srv/bootfarm/boot/linux/initrd.img /lib/modules/6.1.0-42-amd64
# Environment: MODULES (default "e1000 e1000e virtio_net nbd crc32c_generic ext4 overlay af_packet": the
# names that exist are taken), BUSYBOX (default: busybox on PATH), NBD_CLIENT (default:
# nbd-client on PATH; NBD_CLIENT=busybox when BUSYBOX has the nbd-client applet, or the path of
# another busybox binary that has it, installed as /bin/nbd-client); ISCSI=yes (root on an iSCSI
# LUN, bootfarm.iscsi= on the command line) adds open-iscsi's iscsistart (ISCSISTART: its path)
# and the modules iscsi_tcp, sd_mod and iscsi_ibft.
# Debian: apt install busybox nbd-client cpio (open-iscsi for ISCSI=yes; and the kernel's
# linux-image package).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT.img [MODULES_DIR]}
mods=${2:-/lib/modules/$(uname -r)}
[ -f "$mods/modules.dep" ] || { echo "build.sh: $mods/modules.dep not found: give the kernel's modules folder" >&2; exit 2; }
busybox=$(command -v "${BUSYBOX:-busybox}") || { echo "build.sh: busybox not found (apt install busybox)" >&2; exit 2; }
nbdc=${NBD_CLIENT:-nbd-client}
if [ "$nbdc" != busybox ]; then
	nbdc=$(command -v "$nbdc" || command -v "/usr/sbin/$nbdc" || command -v "/sbin/$nbdc") ||
		{ echo "build.sh: nbd-client not found (apt install nbd-client, or NBD_CLIENT=busybox)" >&2; exit 2; }
fi
iscsistart=
if [ "${ISCSI:-no}" = yes ]; then
	iscsistart=$(command -v "${ISCSISTART:-iscsistart}" || command -v /usr/sbin/iscsistart || command -v /sbin/iscsistart) ||
		{ echo "build.sh: iscsistart not found (apt install open-iscsi)" >&2; exit 2; }
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
r=$tmp/root
mkdir -p "$r/bin" "$r/sbin" "$r/etc/bootfarm" "$r/lib/modules" "$r/dev" "$r/proc" "$r/sys" "$r/run" "$r/root" "$r/tmp"

# Binaries and the shared libraries they need (ldd: the loader and libc, at their own paths).
copy_bin() { # FILE [NAME]
	cp "$1" "$r/bin/${2:-$(basename "$1")}"
	ldd "$1" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
		[ -e "$r$lib" ] || { mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"; }
	done
}
copy_bin "$busybox"
for a in $("$busybox" --list); do [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"; done
if [ "$nbdc" = busybox ]; then
	"$busybox" --list | grep -qx nbd-client || { echo "build.sh: $busybox has no nbd-client applet" >&2; exit 2; }
else
	# As /bin/nbd-client whatever its name: a busybox built with the applet runs it by that name.
	rm -f "$r/bin/nbd-client"
	copy_bin "$nbdc" nbd-client
fi
[ -z "$iscsistart" ] || copy_bin "$iscsistart" iscsistart

# Modules in load order: each one's dependencies (modules.dep lists them, deepest last) first.
: >"$tmp/order"
add_module() (
	line=$(grep -E "(^|/)$1\.ko(\.[a-z]+)?:" "$mods/modules.dep" | head -n 1) || return 0
	[ -n "$line" ] || return 0
	path=${line%%:*}
	deps=${line#*:}
	for d in $deps; do
		n=$(basename "$d" | sed 's/\.ko.*$//')
		add_module "$n"
	done
	grep -qx "$path" "$tmp/order" || echo "$path" >>"$tmp/order"
)
modules=${MODULES:-e1000 e1000e virtio_net nbd crc32c_generic ext4 overlay af_packet}
[ -z "$iscsistart" ] || modules="$modules iscsi_tcp sd_mod iscsi_ibft"
for m in $modules; do
	add_module "$(echo "$m" | tr - _)"
	add_module "$m"
done
while read -r p; do
	n=$(basename "$p")
	case "$n" in
	*.ko.xz) xz -dc "$mods/$p" >"$r/lib/modules/${n%.xz}"; n=${n%.xz} ;;
	*.ko.zst) zstd -qdc "$mods/$p" >"$r/lib/modules/${n%.zst}"; n=${n%.zst} ;;
	*.ko.gz) gzip -dc "$mods/$p" >"$r/lib/modules/${n%.gz}"; n=${n%.gz} ;;
	*) cp "$mods/$p" "$r/lib/modules/$n" ;;
	esac
	echo "/lib/modules/$n" >>"$r/etc/bootfarm/modules"
done <"$tmp/order"

cp "$here/init" "$r/init"
mkdir -p "$r/lib/bootfarm"
cp "$here/bootfarm-root.sh" "$r/lib/bootfarm/root.sh"
cp "$here/udhcpc.script" "$r/etc/bootfarm/udhcpc.script"
chmod 755 "$r/init" "$r/etc/bootfarm/udhcpc.script"
if command -v cpio >/dev/null 2>&1; then
	(cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -1 >"$out"
else
	(cd "$r" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc) | gzip -1 >"$out"
fi
echo "build.sh: $out: $(wc -l <"$r/etc/bootfarm/modules") modules, $(du -sk "$r" | cut -f1) KiB unpacked"
