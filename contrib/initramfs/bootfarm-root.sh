# bootfarm's root over NBD, shared by contrib/initramfs/init (busybox only) and the
# initramfs-tools boot script (contrib/initramfs-tools/scripts/bootfarm): read the bootfarm.*
# keys, connect /dev/nbd0 to the first server that serves the export, mount it. The caller
# defines log MESSAGE and fail MESSAGE (which must not return) and brings up the network.
# shellcheck shell=sh

# Sets servers, port, bf_export, cache, nbdopts, ipcfg, fstype, flags, rinit from the command line.
bootfarm_parse() {
	servers= port=10809 bf_export= cache=server nbdopts= ipcfg= fstype=ext4 flags= rinit=/sbin/init
	for w in $(cat /proc/cmdline); do
		case "$w" in
		bootfarm.servers=*) servers=${w#*=} ;;
		bootfarm.port=*) port=${w#*=} ;;
		bootfarm.export=*) bf_export=${w#*=} ;;
		bootfarm.cache=*) cache=${w#*=} ;;
		bootfarm.nbdopts=*) nbdopts=$(echo "${w#*=}" | tr , ' ') ;;
		ip=*) ipcfg=${w#ip=} ;;
		rootfstype=*) fstype=${w#*=} ;;
		rootflags=*) flags=${w#*=} ;;
		init=*) rinit=${w#*=} ;;
		esac
	done
	[ -n "$servers" ] || fail "no bootfarm.servers= on the kernel command line (see [vdisk.linux] in bootfarm.toml)"
	case "$cache" in server | device) ;; *) fail "bootfarm.cache=$cache: expected server or device" ;; esac
}

# Connects /dev/nbd0: the servers in order, three rounds; sets connected to the server.
# With bootfarm-nbd (tools/bootfarm-nbd) the connection is also watched: when it is lost, the
# device is reconnected to the servers in order from the one lost, while I/O waits (a server
# cache's writes are on that node; with the device cache any node serves the same bytes).
# Debian's nbd-client and busybox's applet cannot reconnect a mounted device on Linux 6.1.
bootfarm_connect() {
	[ -e /dev/nbd0 ] || fail "/dev/nbd0 missing: the nbd module is not loaded"
	connected=
	if command -v bootfarm-nbd >/dev/null 2>&1; then
		ro=
		[ "$cache" = device ] && ro=--readonly
		log "connecting /dev/nbd0 with bootfarm-nbd to the first of $servers (port $port) that serves $bf_export"
		# shellcheck disable=SC2086 # nbdopts is a list of words
		connected=$(bootfarm-nbd connect --servers "$servers" --port "$port" --export "$bf_export" $ro $nbdopts /dev/nbd0) ||
			fail "no server of $servers served $bf_export on port $port"
		bootfarm_wait_size
		return
	fi
	# The servers in order, each tried a few times (a server that is starting, a lost SYN).
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
	bootfarm_wait_size
}

# Waits (5 s at most) for the kernel to size /dev/nbd0.
bootfarm_wait_size() {
	i=0
	while [ "$(cat /sys/block/nbd0/size 2>/dev/null || echo 0)" = 0 ] && [ $i -lt 50 ]; do
		sleep 0.1
		i=$((i + 1))
	done
}

# Mounts /dev/nbd0 as the root at $1: read-write (server cache) or read-only under an overlay
# whose upper layer is on tmpfs (device cache; the layers stay under /run/bootfarm).
bootfarm_mount() {
	if [ "$cache" = server ]; then
		mount -t "$fstype" -o "rw${flags:+,$flags}" /dev/nbd0 "$1" || fail "cannot mount /dev/nbd0 ($fstype) read-write"
		log "root: /dev/nbd0 from $connected, read-write (writes in the server's cache)"
	else
		mkdir -p /run/bootfarm/lower /run/bootfarm/rw
		# noload: an ext4 journal is not replayed (that would write to a read-only device).
		ro=ro
		[ "$fstype" = ext4 ] && ro=ro,noload
		mount -t "$fstype" -o "$ro${flags:+,$flags}" /dev/nbd0 /run/bootfarm/lower || fail "cannot mount /dev/nbd0 ($fstype) read-only"
		mount -t tmpfs -o mode=0755 tmpfs /run/bootfarm/rw
		mkdir -p /run/bootfarm/rw/upper /run/bootfarm/rw/work
		mount -t overlay overlay -o lowerdir=/run/bootfarm/lower,upperdir=/run/bootfarm/rw/upper,workdir=/run/bootfarm/rw/work "$1" ||
			fail "cannot mount the overlay (is the overlay module in the initramfs?)"
		log "root: /dev/nbd0 from $connected, read-only, writes in RAM (overlay on tmpfs)"
	fi
}
