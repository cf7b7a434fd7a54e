#!/usr/bin/env bash
# Builds the Debian package: target/debian/bootfarm_VERSION_ARCH.deb, with nothing but dpkg-dev's
# tools (dpkg-deb, dpkg-shlibdeps) and binutils' strip, which a Rust build machine has.
#
#   bash packaging/build-deb.sh            # release build (cargo build --release), then the .deb
#   BOOTFARM_BIN_DIR=DIR bash packaging/build-deb.sh   # package DIR/bootfarm and DIR/bootstorm as built
#
# Contents: /usr/bin/{bootfarm,bootstorm}, /etc/bootfarm/bootfarm.toml (conffile),
# /lib/systemd/system/bootfarm.service, man pages and bash/zsh completions generated from the
# clap definitions (the hidden `generate-docs` subcommand), maintainer scripts (system user,
# /var/lib/bootfarm, /srv/bootfarm, the unit enabled; stopped before removal).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"

root=$PWD
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
out=target/debian
stage=$out/stage
deb=$out/bootfarm_${version}_${arch}.deb

if [ -n "${BOOTFARM_BIN_DIR:-}" ]; then
    bin=$BOOTFARM_BIN_DIR
else
    # Up to date: a no-op of a second. From nothing: several minutes (fat LTO, one codegen unit).
    cargo build --release --locked -p bootfarm -p bootstorm
    bin=target/release
fi
for b in bootfarm bootstorm; do
    [ -x "$bin/$b" ] || { echo "build-deb: $bin/$b is missing: build it (cargo build --release) or set BOOTFARM_BIN_DIR" >&2; exit 1; }
done

rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
install -D -m 0755 "$bin/bootfarm" "$stage/usr/bin/bootfarm"
install -D -m 0755 "$bin/bootstorm" "$stage/usr/bin/bootstorm"
# Debian ships stripped binaries (lintian: unstripped-binary-or-object); panics still name the
# function, without file and line.
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/bootfarm" "$stage/usr/bin/bootstorm"
install -D -m 0644 packaging/bootfarm.toml "$stage/etc/bootfarm/bootfarm.toml"
install -D -m 0644 packaging/bootfarm.service "$stage/lib/systemd/system/bootfarm.service"

docs=$out/docs
rm -rf "$docs"
"$stage/usr/bin/bootfarm" generate-docs "$docs" >/dev/null
"$stage/usr/bin/bootstorm" generate-docs "$docs" >/dev/null
install -d "$stage/usr/share/man/man1"
for page in "$docs"/man/*.1; do
    gzip -9n -c "$page" >"$stage/usr/share/man/man1/$(basename "$page").gz"
done
chmod 0644 "$stage"/usr/share/man/man1/*
install -D -m 0644 "$docs/completions/bootfarm.bash" "$stage/usr/share/bash-completion/completions/bootfarm"
install -D -m 0644 "$docs/completions/bootstorm.bash" "$stage/usr/share/bash-completion/completions/bootstorm"
install -D -m 0644 "$docs/completions/_bootfarm" "$stage/usr/share/zsh/vendor-completions/_bootfarm"
install -D -m 0644 "$docs/completions/_bootstorm" "$stage/usr/share/zsh/vendor-completions/_bootstorm"

install -D -m 0644 packaging/debian/copyright "$stage/usr/share/doc/bootfarm/copyright"
changelog=$out/changelog.Debian
date=$(date -u -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")
cat >"$changelog" <<EOF
bootfarm ($version) unstable; urgency=medium

  * Built from the bootfarm repository ($(git rev-parse --short HEAD 2>/dev/null || echo unknown)).

 -- bootfarm maintainers <bootfarm@example.org>  $date
EOF
gzip -9n -c "$changelog" >"$stage/usr/share/doc/bootfarm/changelog.gz"
chmod 0644 "$stage/usr/share/doc/bootfarm/changelog.gz"

for s in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$s" "$stage/DEBIAN/$s"
done
echo /etc/bootfarm/bootfarm.toml >"$stage/DEBIAN/conffiles"

# Library dependencies of the binaries as dpkg-shlibdeps finds them (it wants a debian/control).
shlib=$out/shlibdeps
rm -rf "$shlib"
mkdir -p "$shlib/debian"
printf 'Source: bootfarm\n\nPackage: bootfarm\nArchitecture: any\n' >"$shlib/debian/control"
depends=$(cd "$shlib" && dpkg-shlibdeps -O "$root/$stage/usr/bin/bootfarm" "$root/$stage/usr/bin/bootstorm" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "build-deb: dpkg-shlibdeps found no library dependency" >&2; exit 1; }

size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: bootfarm
Version: $version
Architecture: $arch
Maintainer: bootfarm maintainers <bootfarm@example.org>
Installed-Size: $size
Depends: $depends, adduser
Section: net
Priority: optional
Description: network-boot appliance: TFTP, HTTP and NBD vDisks on io_uring
 bootfarm network-boots hundreds of machines at once: bootstrap files over
 TFTP (RFC 1350/2347/2348/2349/7440) and HTTP, generated iPXE scripts, and
 system disks (vDisks) streamed from VHD/VHDX images over NBD or HTTP ranges,
 with a per-target write cache, from a farm of servers with failover. One
 io_uring worker per core.
 .
 This package also ships bootstorm, a load generator that simulates booting
 machines against a farm and measures boots per second.
EOF
(cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
