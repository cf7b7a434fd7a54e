#!/usr/bin/env python3
"""Hostile-load soak for bootfarm (issue #20, items 4-11), loopback only, bounded in time and count.

Phases: baseline (a well-behaved client alone), attack (the same client while the attacks below
run), recovery (the client alone again). Throughout, the server's RSS and CPU are sampled from
/proc and each well-behaved request is timed. Attacks, each from its own 127.x source addresses:

  a4  netascii RRQs of a large text file, ACKed slowly (one ACK per second per transfer)
  a5  NBD connections whose replies are never read, asking for overflow-file blocks
  a6  whole-disk TRIMs and WRITE_ZEROES from many targets
  a7  many write caches from one address (a new target id per cache, writes into each)
  a8  NBD connections from one address, handshaken and then idle
  a10 RRQs with `timeout 255` from 1,025 addresses that never ACK (8,400 datagrams)
  a11 HTTP connections from 128 addresses that never send a byte

The well-behaved client per round: a TFTP fetch of the bootstrap (blksize 1432, tsize), an HTTP
range GET of 64 KiB of the vdisk, an NBD handshake + 64 KiB READ, each checked against the
expected bytes. Prints one JSON object on stdout.
"""
import argparse, json, os, random, resource, selectors, socket, struct, threading, time

NBD_OPT_MAGIC = b"IHAVEOPT"
REQ_MAGIC = 0x25609513
REPLY_MAGIC = 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC, CMD_TRIM, CMD_WZ = 0, 1, 2, 4, 6

stop_all = threading.Event()


def now():
    return time.monotonic()


def recv_exact(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("closed after %d of %d bytes" % (len(b), n))
        b += c
    return bytes(b)


def nbd_connect(host, port, export, src=None, timeout=10, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if src:
        s.bind((src, 0))
    s.connect((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hello = recv_exact(s, 18)
    if hello[:8] != b"NBDMAGIC" or hello[8:16] != NBD_OPT_MAGIC:
        raise ConnectionError("not an NBD newstyle server")
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    name = export.encode()
    s.sendall(NBD_OPT_MAGIC + struct.pack(">II", 1, len(name)) + name)  # EXPORT_NAME
    size, _flags = struct.unpack(">QH", recv_exact(s, 10))
    return s, size


def nbd_request(s, cmd, off, length, cookie=1, data=b""):
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, cmd, cookie, off, length) + data)


def nbd_reply(s, length):
    magic, err, _cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != REPLY_MAGIC:
        raise ConnectionError("bad reply magic %#x" % magic)
    if err:
        return err, b""
    return 0, recv_exact(s, length)


# ---------- the well-behaved client ----------

def tftp_get(host, port, name, timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(b"\0\1" + name.encode() + b"\0octet\0blksize\0001432\0tsize\0000\0", (host, port))
        out = bytearray()
        blk = 1432
        expect = 1
        while True:
            pkt, peer = s.recvfrom(65536)
            op = struct.unpack(">H", pkt[:2])[0]
            if op == 6:  # OACK
                opts = pkt[2:].split(b"\0")
                d = {opts[i].lower(): opts[i + 1] for i in range(0, len(opts) - 1, 2)}
                blk = int(d.get(b"blksize", b"512"))
                s.sendto(b"\0\4\0\0", peer)
                continue
            if op == 5:
                raise ConnectionError("TFTP error %r" % pkt[4:-1])
            n = struct.unpack(">H", pkt[2:4])[0]
            if n == expect & 0xFFFF:
                out += pkt[4:]
                expect += 1
            s.sendto(b"\0\4" + pkt[2:4], peer)
            if n == (expect - 1) & 0xFFFF and len(pkt) - 4 < blk:
                return bytes(out)
    finally:
        s.close()


def http_range(host, port, path, off, length, timeout=5.0):
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nRange: bytes=%d-%d\r\nConnection: close\r\n\r\n" % (path, off, off + length - 1)).encode())
        buf = bytearray()
        while True:
            c = s.recv(65536)
            if not c:
                break
            buf += c
        head, _, body = bytes(buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 206"):
            raise ConnectionError("HTTP answered %r" % head.split(b"\r\n")[0])
        return body
    finally:
        s.close()


def nbd_read(host, port, export, off, length):
    s, _ = nbd_connect(host, port, export, timeout=5)
    try:
        nbd_request(s, CMD_READ, off, length)
        err, data = nbd_reply(s, length)
        if err:
            raise ConnectionError("NBD error %d" % err)
        nbd_request(s, CMD_DISC, 0, 0)
        return data
    finally:
        s.close()


def good_client(a, disk, boot, phase, samples, failures):
    rnd = random.Random(1)
    i = 0
    while not stop_all.is_set():
        i += 1
        off = rnd.randrange(0, (len(disk) - 65536) // 4096) * 4096
        for kind, fn, want in (
            ("tftp", lambda: tftp_get(a.host, a.tftp, a.boot_name), boot),
            ("http", lambda: http_range(a.host, a.http, "/vdisk/" + a.vdisk, off, 65536), disk[off : off + 65536]),
            ("nbd", lambda: nbd_read(a.host, a.nbd, a.vdisk + "@good-client", off, 65536), disk[off : off + 65536]),
        ):
            t = now()
            try:
                got = fn()
                ok = got == want
                err = None if ok else "wrong bytes (%d vs %d)" % (len(got), len(want))
            except Exception as e:  # noqa: BLE001 - every failure is reported, by kind
                ok, err = False, "%s: %s" % (type(e).__name__, e)
            dt = now() - t
            samples.append((phase[0], kind, dt, ok))
            if not ok:
                failures.append((phase[0], kind, err))
        time.sleep(a.interval)


# ---------- the server's footprint ----------

def proc_rss_kib(pid):
    """Anonymous resident memory (RssAnon): what the server allocated. File pages of the image
    and bootstrap mappings (RssFile) are page cache the kernel can drop, not the server's growth."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sampler(pid, phase, rss):
    while not stop_all.is_set():
        try:
            rss.append((phase[0], now(), proc_rss_kib(pid)))
        except OSError:
            rss.append((phase[0], now(), -1))
            return
        time.sleep(0.25)


# ---------- the attacks (each runs until `stop` is set, bounded in sockets) ----------

def a4_netascii(a, stop, stats):
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(40):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.4.%d" % (1 + i % 8), 0))
        s.setblocking(False)
        s.sendto(b"\0\1" + a.text_name.encode() + b"\0netascii\0", (a.host, a.tftp))
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        stats["a4_rrq"] += 1
    last_ack = {}
    while not stop.is_set():
        for key, _ in sel.select(0.2):
            s = key.fileobj
            try:
                pkt, peer = s.recvfrom(2048)
            except OSError:
                continue
            stats["a4_bytes_in"] += len(pkt)
            t = now()
            if pkt[:2] == b"\0\3" and t - last_ack.get(s, 0) >= 1.0:
                s.sendto(b"\0\4" + pkt[2:4], peer)
                last_ack[s] = t
    for s in socks:
        s.close()


def a5_unread_overflow(a, stop, stats):
    conns = []
    chunk = os.urandom(1 << 20)
    for i in range(20):
        try:
            s, size = nbd_connect(a.host, a.nbd, "%s@soak5-%d" % (a.vdisk, i), src="127.0.5.%d" % (1 + i), rcvbuf=4096)
            # Fill past the RAM tier so reads come from the overflow file.
            for m in range(a.a5_write_mib):
                nbd_request(s, CMD_WRITE, (m << 20), 1 << 20, cookie=m, data=chunk)
                nbd_reply(s, 0)
            s.setblocking(False)
            for q in range(128):
                try:
                    nbd_request(s, CMD_READ, (q % a.a5_write_mib) << 20, 1 << 20, cookie=q)
                except (BlockingIOError, OSError):
                    break
            conns.append(s)
            stats["a5_conns"] += 1
        except Exception as e:  # noqa: BLE001
            stats["a5_refused"] += 1
            stats.setdefault("a5_errors", str(e))
    stop.wait()
    for s in conns:
        s.close()


def a6_trim(a, stop, stats):
    step = (1 << 32) - (1 << 20)
    while not stop.is_set() and stats["a6_targets"] < 64:
        i = stats["a6_targets"]
        stats["a6_targets"] += 1
        try:
            s, size = nbd_connect(a.host, a.nbd, "%s@soak6-%d" % (a.vdisk, i), src="127.0.6.%d" % (1 + i % 16))
            off, c = 0, 0
            while off < size:
                n = min(step, size - off)
                nbd_request(s, CMD_TRIM if c % 2 == 0 else CMD_WZ, off, n, cookie=c)
                err, _ = nbd_reply(s, 0)
                stats["a6_ok" if err == 0 else "a6_err"] += 1
                off += n
                c += 1
            # Keep the target alive (its cache) for the rest of the phase.
            stats.setdefault("a6_socks", []).append(s)
        except Exception:  # noqa: BLE001
            stats["a6_refused"] += 1
    stop.wait()
    for s in stats.pop("a6_socks", []):
        s.close()


def a7_many_caches(a, stop, stats):
    data = os.urandom(1 << 20)
    socks = []
    for i in range(a.a7_targets):
        if stop.is_set():
            break
        try:
            s, _ = nbd_connect(a.host, a.nbd, "%s@soak7-%d" % (a.vdisk, i), src="127.0.7.1")
            for m in range(8):
                nbd_request(s, CMD_WRITE, (64 << 20) + (m << 20), 1 << 20, cookie=m, data=data)
                err, _ = nbd_reply(s, 0)
                stats["a7_write_ok" if err == 0 else "a7_write_err"] += 1
                if err:
                    stats["a7_write_errno"] = err
            socks.append(s)
            stats["a7_targets"] += 1
        except Exception:  # noqa: BLE001
            stats["a7_refused"] += 1
    stop.wait()
    for s in socks:
        s.close()


def a8_idle_nbd(a, stop, stats):
    socks = []
    for i in range(a.a8_conns):
        if stop.is_set():
            break
        try:
            s, _ = nbd_connect(a.host, a.nbd, a.vdisk, src="127.0.8.1", timeout=3)
            socks.append(s)
            stats["a8_held"] += 1
        except Exception:  # noqa: BLE001
            stats["a8_refused"] += 1
    stop.wait()
    for s in socks:
        s.close()


def a10_spoofed_timeout(a, stop, stats):
    addrs = ["127.10.%d.%d" % (1 + i // 250, 1 + i % 250) for i in range(1025)]
    socks = []
    sent = 0
    for i, src in enumerate(addrs):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
    # 8,400 datagrams spread over the first half of the phase, then silence (no ACK, ever).
    t0 = now()
    per = max(1, 8400 // len(socks))
    for r in range(per + 1):
        for s in socks:
            if sent >= 8400 or stop.is_set():
                break
            try:
                s.sendto(b"\0\1" + a.boot_name.encode() + b"\0octet\0timeout\000255\0blksize\0001432\0", (a.host, a.tftp))
                sent += 1
            except OSError:
                pass
        time.sleep(0.01)
    stats["a10_sent"] = sent
    while not stop.is_set():
        for s in socks:
            try:
                while True:
                    pkt = s.recv(2048)
                    stats["a10_bytes_in"] += len(pkt)
            except OSError:
                pass
        stop.wait(0.2)
    stats["a10_send_s"] = round(now() - t0, 2)
    for s in socks:
        s.close()


def a11_silent_http(a, stop, stats):
    socks = []
    for i in range(128 * a.a11_per_addr):
        if stop.is_set():
            break
        src = "127.11.0.%d" % (1 + i // a.a11_per_addr)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((src, 0))
            s.connect_ex((a.host, a.http))
            socks.append(s)
            stats["a11_opened"] += 1
        except OSError:
            s.close()
            stats["a11_failed"] += 1
    # Count the ones the server closes (timeouts) by the end.
    stop.wait()
    closed = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    stats["a11_closed_by_server"] = closed


ATTACKS = {"a4": a4_netascii, "a5": a5_unread_overflow, "a6": a6_trim, "a7": a7_many_caches, "a8": a8_idle_nbd, "a10": a10_spoofed_timeout, "a11": a11_silent_http}


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tftp", type=int, required=True)
    ap.add_argument("--http", type=int, required=True)
    ap.add_argument("--nbd", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--vdisk", required=True)
    ap.add_argument("--disk", required=True, help="a local copy of the vdisk's first bytes (raw)")
    ap.add_argument("--boot", required=True, help="local copy of the bootstrap file")
    ap.add_argument("--boot-name", required=True)
    ap.add_argument("--text-name", required=True)
    ap.add_argument("--baseline-s", type=float, default=10)
    ap.add_argument("--attack-s", type=float, default=60)
    ap.add_argument("--recovery-s", type=float, default=15)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--a5-write-mib", type=int, default=16)
    ap.add_argument("--a7-targets", type=int, default=64)
    ap.add_argument("--a8-conns", type=int, default=3000)
    ap.add_argument("--a11-per-addr", type=int, default=64)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with open(a.disk, "rb") as f:
        disk = f.read()
    with open(a.boot, "rb") as f:
        boot = f.read()
    phase = ["baseline"]
    samples, failures, rss = [], [], []
    stats = {k: 0 for k in ("a4_rrq", "a4_bytes_in", "a5_conns", "a5_refused", "a6_targets", "a6_ok", "a6_err", "a6_refused",
                            "a7_targets", "a7_write_ok", "a7_write_err", "a7_refused", "a8_held", "a8_refused", "a10_bytes_in",
                            "a11_opened", "a11_failed")}
    cpu0 = proc_cpu_s(a.pid)
    threads = [threading.Thread(target=good_client, args=(a, disk, boot, phase, samples, failures), daemon=True),
               threading.Thread(target=sampler, args=(a.pid, phase, rss), daemon=True)]
    for t in threads:
        t.start()
    time.sleep(a.baseline_s)
    cpu1 = proc_cpu_s(a.pid)
    phase[0] = "attack"
    stop = threading.Event()
    attackers = [threading.Thread(target=ATTACKS[n], args=(a, stop, stats), daemon=True) for n in a.attacks.split(",") if n]
    for t in attackers:
        t.start()
    time.sleep(a.attack_s)
    cpu2 = proc_cpu_s(a.pid)
    stop.set()
    for t in attackers:
        t.join(timeout=30)
    phase[0] = "recovery"
    time.sleep(a.recovery_s)
    cpu3 = proc_cpu_s(a.pid)
    stop_all.set()
    for t in threads:
        t.join(timeout=10)

    out = {"attacks": a.attacks, "stats": {k: v for k, v in stats.items() if not isinstance(v, list)}, "phases": {}}
    for ph, cpu in (("baseline", cpu1 - cpu0), ("attack", cpu2 - cpu1), ("recovery", cpu3 - cpu2)):
        r = [x[2] for x in rss if x[0] == ph and x[2] >= 0]
        d = {"rss_mib_first": round(r[0] / 1024, 1) if r else None, "rss_mib_max": round(max(r) / 1024, 1) if r else None,
             "rss_mib_last": round(r[-1] / 1024, 1) if r else None, "server_cpu_s": round(cpu, 2)}
        for kind in ("tftp", "http", "nbd"):
            lat = [x[2] * 1000 for x in samples if x[0] == ph and x[1] == kind and x[3]]
            bad = sum(1 for x in samples if x[0] == ph and x[1] == kind and not x[3])
            d[kind] = {"n": len(lat), "failed": bad, "p50_ms": round(pct(lat, 50), 2) if lat else None,
                       "p99_ms": round(pct(lat, 99), 2) if lat else None, "max_ms": round(max(lat), 2) if lat else None}
        out["phases"][ph] = d
    out["server_alive"] = os.path.exists("/proc/%d" % a.pid)
    out["failures"] = failures[:20]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
