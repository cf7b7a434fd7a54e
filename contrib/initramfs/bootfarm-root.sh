# bootfarm's root over NBD or iSCSI, shared by contrib/initramfs/init (busybox only) and the
# initramfs-tools boot script (contrib/initramfs-tools/scripts/bootfarm): read the bootfarm.*
# keys, connect /dev/nbd0 (or log in to an iSCSI target with open-iscsi's iscsistart) to the
# first server that serves the vdisk, mount it. The caller defines log MESSAGE and fail MESSAGE
# (which must not return) and brings up the network.
# shellcheck shell=sh

# Sets servers, port, bf_export, cache, nbdopts, ipcfg, fstype, flags, rinit and the iSCSI keys
# (iscsi: "ibft" or the target IQN, empty for NBD; initiator, tpgt) from the command line.
bootfarm_parse() {
	servers= port= bf_export= cache=server nbdopts= ipcfg= fstype=ext4 flags= rinit=/sbin/init
	iscsi= initiator= tpgt=1
	for w in $(cat /proc/cmdline); do
		case "$w" in
		bootfarm.servers=*) servers=${w#*=} ;;
		bootfarm.port=*) port=${w#*=} ;;
		bootfarm.export=*) bf_export=${w#*=} ;;
		bootfarm.cache=*) cache=${w#*=} ;;
		bootfarm.nbdopts=*) nbdopts=$(echo "${w#*=}" | tr , ' ') ;;
		bootfarm.iscsi=*) iscsi=${w#*=} ;;
		bootfarm.initiator=*) initiator=${w#*=} ;;
		bootfarm.tpgt=*) tpgt=${w#*=} ;;
		ip=*) ipcfg=${w#ip=} ;;
		rootfstype=*) fstype=${w#*=} ;;
		rootflags=*) flags=${w#*=} ;;
		init=*) rinit=${w#*=} ;;
		esac
	done
	if [ -n "$iscsi" ]; then port=${port:-3260}; else port=${port:-10809}; fi
	[ -n "$servers" ] || [ "$iscsi" = ibft ] || fail "no bootfarm.servers= on the kernel command line (see [vdisk.linux] in bootfarm.toml)"
	case "$cache" in server | device) ;; *) fail "bootfarm.cache=$cache: expected server or device" ;; esac
}

# Connects the root device: iSCSI when bootfarm.iscsi= is given, NBD otherwise; sets rootdev
# (the block device) and connected (the server).
bootfarm_connect() {
	if [ -n "$iscsi" ]; then
		bootfarm_connect_iscsi
	else
		bootfarm_connect_nbd
	fi
}

# The block device of the first disk of any iSCSI session (a peer target's LUN 0 may be a
# controller without one), once it has a size; empty when none appeared within 10 s.
bootfarm_iscsi_disk() {
	i=0
	while [ $i -lt 100 ]; do
		for b in /sys/class/iscsi_session/session*/device/target*/*/block/*; do
			[ -e "$b" ] && [ "$(cat "$b/size" 2>/dev/null || echo 0)" != 0 ] && { echo "/dev/${b##*/}"; return 0; }
		done
		sleep 0.1
		i=$((i + 1))
	done
}

# Logs in with iscsistart: from the iBFT that iPXE published (bootfarm.iscsi=ibft, after a
# `sanhook`), or to target bootfarm.iscsi=<IQN> on the servers in order (three rounds) as
# bootfarm.initiator=<IQN> (default: one made of the first NIC's MAC). The kernel's session
# lives on after iscsistart exits; there is no iscsid to reconnect it.
bootfarm_connect_iscsi() {
	command -v iscsistart >/dev/null 2>&1 || fail "iscsistart missing (open-iscsi; build the initramfs with ISCSI=yes)"
	[ -d /sys/class/iscsi_transport/tcp ] || fail "no iscsi_tcp transport: the iscsi_tcp module is not loaded"
	connected=
	if [ "$iscsi" = ibft ]; then
		[ -d /sys/firmware/ibft/target0 ] || fail "no iBFT (/sys/firmware/ibft/target0): did iPXE sanhook the LUN, is iscsi_ibft loaded?"
		t=/sys/firmware/ibft/target0
		log "logging in from the iBFT: $(cat $t/target-name) at $(cat $t/ip-addr):$(cat $t/port) as $(cat /sys/firmware/ibft/initiator/initiator-name)"
		iscsistart -b || fail "iscsistart -b: the login from the iBFT failed"
		connected="$(cat $t/ip-addr):$(cat $t/port)"
	else
		if [ -z "$initiator" ]; then
			for d in /sys/class/net/*; do
				[ "${d##*/}" != lo ] && { initiator="iqn.2026-12.org.bootfarm.target:$(tr -d : <"$d/address")"; break; }
			done
		fi
		for round in 1 2 3; do
			for s in $(echo "$servers" | tr , ' '); do
				log "logging in to $iscsi at $s:$port as $initiator"
				if iscsistart -i "$initiator" -t "$iscsi" -g "$tpgt" -a "$s" -p "$port"; then
					connected=$s:$port
					break 2
				fi
				log "$s:$port did not log us in to $iscsi"
			done
			sleep $round
		done
		[ -n "$connected" ] || fail "no server of $servers logged us in to $iscsi on port $port"
	fi
	rootdev=$(bootfarm_iscsi_disk)
	[ -n "$rootdev" ] || fail "logged in to $connected but no disk appeared in 10 s (is sd_mod loaded?)"
	log "iSCSI disk $rootdev from $connected"
}

# Connects /dev/nbd0: the servers in order, three rounds; sets connected to the server.
bootfarm_connect_nbd() {
	# The servers in order, each tried a few times (a server that is starting, a lost SYN).
	[ -e /dev/nbd0 ] || fail "/dev/nbd0 missing: the nbd module is not loaded"
	connected=
	# A device-cache root is never written: say so to the kernel where the client can (Debian's).
	ro_opt=
	[ "$cache" = device ] && nbd-client -h 2>&1 | grep -q -- -readonly && ro_opt=-readonly
	for round in 1 2 3; do
		for s in $(echo "$servers" | tr , ' '); do
			log "connecting /dev/nbd0 to $s:$port export $bf_export"
			# shellcheck disable=SC2086 # nbdopts is a list of words
			if nbd-client -N "$bf_export" $ro_opt $nbdopts "$s" "$port" /dev/nbd0; then
				connected=$s
				break 2
			fi
			log "$s:$port did not serve $bf_export"
		done
		sleep $round
	done
	[ -n "$connected" ] || fail "no server of $servers served $bf_export on port $port"
	i=0
	while [ "$(cat /sys/block/nbd0/size 2>/dev/null || echo 0)" = 0 ] && [ $i -lt 50 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	rootdev=/dev/nbd0
}

# Mounts $rootdev as the root at $1: read-write (server cache) or read-only under an overlay
# whose upper layer is on tmpfs (device cache; the layers stay under /run/bootfarm).
bootfarm_mount() {
	if [ "$cache" = server ]; then
		mount -t "$fstype" -o "rw${flags:+,$flags}" "$rootdev" "$1" || fail "cannot mount $rootdev ($fstype) read-write"
		log "root: $rootdev from $connected, read-write (writes in the server's cache)"
	else
		mkdir -p /run/bootfarm/lower /run/bootfarm/rw
		# noload: an ext4 journal is not replayed (that would write to a read-only device).
		ro=ro
		[ "$fstype" = ext4 ] && ro=ro,noload
		mount -t "$fstype" -o "$ro${flags:+,$flags}" "$rootdev" /run/bootfarm/lower || fail "cannot mount $rootdev ($fstype) read-only"
		mount -t tmpfs -o mode=0755 tmpfs /run/bootfarm/rw
		mkdir -p /run/bootfarm/rw/upper /run/bootfarm/rw/work
		mount -t overlay overlay -o lowerdir=/run/bootfarm/lower,upperdir=/run/bootfarm/rw/upper,workdir=/run/bootfarm/rw/work "$1" ||
			fail "cannot mount the overlay (is the overlay module in the initramfs?)"
		log "root: $rootdev from $connected, read-only, writes in RAM (overlay on tmpfs)"
	fi
}
