//! NBD write caches and reply memory against the running binary: a target keeps the image it
//! booted with across a reload, and the limits on cache memory hold.

mod common;
use bootfarm::nbd::wire;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const M: u64 = 1 << 20;

/// A minimal fixed-newstyle client (simple replies): handshake with GO, then raw requests.
struct Raw {
    s: TcpStream,
    size: u64,
}

impl Raw {
    fn try_go(port: u16, export: &str) -> Result<Raw, (u32, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        nbd_go(&mut s, export).map(|size| Raw { s, size })
    }
    fn go(port: u16, export: &str) -> Raw {
        Raw::try_go(port, export).unwrap_or_else(|e| panic!("GO {export}: {e:?}"))
    }
    fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        assert_eq!(self.request(wire::CMD_READ, cookie, offset, len, &[]), (0, cookie), "READ {len} at {offset}");
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        d
    }
    fn request(&mut self, kind: u16, cookie: u64, offset: u64, length: u32, payload: &[u8]) -> (u32, u64) {
        self.s.write_all(&nbd_request(kind, cookie, offset, length, payload)).unwrap();
        self.reply()
    }
    fn reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), wire::SIMPLE_REPLY_MAGIC);
        (u32::from_be_bytes(h[4..8].try_into().unwrap()), u64::from_be_bytes(h[8..16].try_into().unwrap()))
    }
}

/// A raw image of `size` bytes whose content is `pattern(seed)`.
fn raw_image(path: &Path, seed: u64, size: u64) {
    std::fs::write(path, pattern(seed, 0, size as usize)).unwrap();
}

/// The configuration text with this `[nbd]` section body and the vdisk `v` at `path`.
fn config(ports: (u16, u16, u16), nbd: &str, path: &str) -> String {
    format!(
        "[server]\ntftp_port = {}\nhttp_port = {}\nnbd_port = {}\nreload_poll_ms = 100\nreload_debounce_ms = 50\n[tftp]\nroot = \"boot\"\n[nbd]\ncache_dir = \"cache\"\n{nbd}\n[[vdisk]]\nname = \"v\"\npath = \"{path}\"\n",
        ports.0, ports.1, ports.2
    )
}

fn start(dir: &TempDir, nbd: &str, path: &str) -> (Server, (u16, u16, u16)) {
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    let ports = (free_port(), free_port(), free_port());
    std::fs::write(dir.join("bootfarm.toml"), config(ports, nbd, path)).unwrap();
    let s = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
    (s, ports)
}

fn metrics(http_port: u16) -> String {
    String::from_utf8(run(Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{http_port}/metrics")])).stdout).unwrap()
}

fn metric(m: &str, name: &str) -> f64 {
    m.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in\n{m}"))
        .parse()
        .unwrap()
}

/// Item 15 of #20: a reload that points the vdisk at a bigger image while a target is
/// connected. The target's next connection is served from the image it booted with (its size
/// and its data, reads past its end refused), a new target gets the new image.
#[test]
fn a_connected_target_keeps_its_image_across_a_reload() {
    let dir = TempDir::new("nbd-image-reload");
    raw_image(&dir.join("a.raw"), 1, 12 * M);
    raw_image(&dir.join("b.raw"), 2, 20 * M);
    let (s, ports) = start(&dir, "", "a.raw");
    let mut first = Raw::go(ports.2, "v@t");
    assert_eq!(first.size, 12 * M);
    assert_eq!(first.request(wire::CMD_WRITE, 1, 4096, 4096, &[7u8; 4096]), (0, 1));
    std::fs::write(dir.join("bootfarm.toml"), config(ports, "", "b.raw")).unwrap();
    s.wait_for("generation=2");
    // A second connection of the connected target: old size, old data, its own writes.
    let mut again = Raw::go(ports.2, "v@t");
    assert_eq!(again.size, 12 * M, "the target keeps the size it booted with");
    assert_same("old image data", &again.read(2, 10 * M, 65536), &pattern(1, 10 * M, 65536));
    assert_eq!(again.read(3, 4096, 4096), vec![7u8; 4096], "its writes are kept");
    assert_eq!(again.request(wire::CMD_READ, 4, 13 * M, 4096, &[]).0, wire::EINVAL, "past its own disk's end");
    assert_same("first connection, old data", &first.read(5, 0, 4096), &pattern(1, 0, 4096));
    // A new target boots from the new image.
    let mut new = Raw::go(ports.2, "v@n");
    assert_eq!(new.size, 20 * M);
    assert_same("new image data", &new.read(6, 18 * M, 65536), &pattern(2, 18 * M, 65536));
    // The line is written before the reply, but reaches the test through a pipe and a reader
    // thread: wait for it rather than read what has arrived so far.
    assert!(s.wait_for("keeps the image it booted with").contains("booted with"), "the resume on an older image is logged");
}

/// Item 13 of #20: one connection of a target asks for 32 MiB of X (cache pages) and does not
/// read the reply yet, so the send is stuck half way with iovecs on X's pages; another
/// connection of the same target TRIMs X and writes Y. The stuck reply must still carry X.
#[test]
fn a_reply_in_flight_keeps_its_pages_while_another_connection_trims_and_writes() {
    let dir = TempDir::new("nbd-pin");
    raw_image(&dir.join("a.raw"), 1, 128 * M);
    let (_s, ports) = start(&dir, "cache_ram_bytes_per_target = 134217728", "a.raw");
    let len = 32 * M as usize;
    let (x, y) = (0u64, 64 * M);
    let mut writer = Raw::go(ports.2, "v@t");
    let xdata = pattern(5, x, len);
    for (i, part) in xdata.chunks(4 * M as usize).enumerate() {
        assert_eq!(writer.request(wire::CMD_WRITE, i as u64, x + i as u64 * 4 * M, part.len() as u32, part), (0, i as u64));
    }
    let mut reader = Raw::go(ports.2, "v@t");
    reader.s.write_all(&nbd_request(wire::CMD_READ, 100, x, len as u32, &[])).unwrap();
    // The reply has started (its header is here): the batch points at X's pages now.
    let mut h = [0u8; 16];
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.s.peek(&mut h).unwrap() < 16 {
        assert!(Instant::now() < deadline, "no reply started");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(writer.request(wire::CMD_TRIM, 200, x, len as u32, &[]), (0, 200));
    let ydata = pattern(6, y, len);
    for (i, part) in ydata.chunks(4 * M as usize).enumerate() {
        let c = 300 + i as u64;
        assert_eq!(writer.request(wire::CMD_WRITE, c, y + i as u64 * 4 * M, part.len() as u32, part), (0, c));
    }
    assert_eq!(reader.reply(), (0, 100));
    let mut got = vec![0u8; len];
    reader.s.read_exact(&mut got).unwrap();
    assert_same("the READ of X sent while X was trimmed and Y written", &got, &xdata);
    // After the reply X reads as trimmed (zeros) and Y as written.
    assert!(reader.read(101, x, 65536).iter().all(|&b| b == 0));
    assert_same("Y", &reader.read(102, y, 65536), &ydata[..65536]);
}

/// Item 7 of #20: one address holds at most nbd.targets_per_address_max write caches (a new
/// one gets NBD_REP_ERR_POLICY naming the key, counted); the RAM of all caches stops at
/// nbd.cache_ram_bytes_total_max and the rest goes to the overflow files.
#[test]
fn targets_per_address_and_the_global_ram_cap() {
    let dir = TempDir::new("nbd-per-address");
    raw_image(&dir.join("a.raw"), 1, 16 * M);
    let nbd = "targets_per_address_max = 3\ncache_keep_after_disconnect_ms = 0\ncache_ram_bytes_per_target = 65536\ncache_ram_bytes_total_max = 98304";
    let (s, ports) = start(&dir, nbd, "a.raw");
    let mut held: Vec<Raw> = (1..=3).map(|i| Raw::go(ports.2, &format!("v@t{i}"))).collect();
    let (kind, msg) = Raw::try_go(ports.2, "v@t4").err().expect("a fourth target is refused");
    assert_eq!(kind, wire::REP_ERR_POLICY);
    assert!(msg.contains("nbd.targets_per_address_max 3") && msg.contains("127.0.0.1"), "{msg}");
    let again = Raw::go(ports.2, "v@t2"); // a connection of a target it holds is no new target
                                          // RAM: t1 fills its 64 KiB and more, t2 gets the 32 KiB left, the rest overflows.
    let big = pattern(9, 0, 128 * 1024);
    assert_eq!(held[0].request(wire::CMD_WRITE, 1, 0, big.len() as u32, &big), (0, 1));
    assert_eq!(held[1].request(wire::CMD_WRITE, 2, 0, big.len() as u32, &big), (0, 2));
    assert_same("t2 reads back RAM and overflow", &held[1].read(3, 0, 128 * 1024), &big);
    let m = metrics(ports.1);
    assert_eq!(metric(&m, "bootfarm_nbd_cache_ram_bytes"), 98304.0, "RAM stops at the global cap");
    assert_eq!(metric(&m, "bootfarm_nbd_cache_bytes"), 2.0 * 131072.0);
    assert_eq!(metric(&m, "bootfarm_nbd_targets_refused_total{reason=\"targets_per_address\"}"), 1.0);
    assert!(s.log().contains("cache_ram_bytes_total_max"), "meeting the RAM cap is logged");
    // A target that goes makes room for a new one.
    drop(held.remove(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Raw::try_go(ports.2, "v@t4") {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "no room after a target went: {e:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(again);
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
}

/// Item 5 of #20: 20 connections ask for 8 READs of 8 MiB of overflow-file blocks each and
/// do not read the replies. Copied with pread (`cache_overflow_mapped = false`), the copies a
/// connection holds stop at nbd.reply_scratch_bytes_max (4 MiB) instead of a whole batch
/// (64 MiB), and a READ larger than that is answered over several batches with the right
/// bytes. Sent from the file's mappings (the default), nothing is copied: the file's pages,
/// mapped once, are all the replies hold.
#[test]
fn connections_that_do_not_read_hold_bounded_reply_memory() {
    for (mapped, per_conn_max) in [(false, 8.0), (true, 1.0)] {
        stalled_connections(mapped, per_conn_max);
    }
}

fn stalled_connections(mapped: bool, per_conn_max: f64) {
    let dir = TempDir::new(&format!("nbd-scratch-{mapped}"));
    raw_image(&dir.join("a.raw"), 1, 16 * M);
    let (s, ports) = start(&dir, &format!("cache_ram_bytes_per_target = 4096\ncache_overflow_mapped = {mapped}"), "a.raw");
    let pid = s.child.id();
    let len = 8 * M as usize;
    let data = pattern(4, 0, len);
    let mut w = Raw::go(ports.2, "v@t");
    for (i, part) in data.chunks(4 * M as usize).enumerate() {
        assert_eq!(w.request(wire::CMD_WRITE, i as u64, i as u64 * 4 * M, part.len() as u32, part), (0, i as u64));
    }
    let before = vm_rss_kib(pid);
    let mut conns: Vec<Raw> = (0..20).map(|_| Raw::go(ports.2, "v@t")).collect();
    for c in conns.iter_mut() {
        for i in 0..8 {
            c.s.write_all(&nbd_request(wire::CMD_READ, i, 0, len as u32, &[])).unwrap();
        }
    }
    // Every connection's reply has started; then RSS is sampled until it settles.
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in &conns {
        let mut h = [0u8; 16];
        while c.s.peek(&mut h).unwrap_or(0) < 16 {
            assert!(Instant::now() < deadline, "a reply did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (mut peak, mut still) = (0u64, 0);
    while still < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let r = vm_rss_kib(pid);
        still = if r <= peak + 512 { still + 1 } else { 0 };
        peak = peak.max(r);
    }
    let grown_mib = peak.saturating_sub(before) as f64 / 1024.0;
    let mappings = metric(&metrics(ports.1), "bootfarm_nbd_cache_overflow_mappings");
    assert_eq!(mappings, if mapped { 1.0 } else { 0.0 }, "mapped {mapped}: the target's overflow file, one window");
    eprintln!(
        "mapped {mapped}: VmRSS {before} kB before, {peak} kB with 20 stalled connections: {:.1} MiB per connection",
        grown_mib / 20.0
    );
    assert!(grown_mib / 20.0 < per_conn_max, "mapped {mapped}: reply memory per stalled connection: {:.1} MiB", grown_mib / 20.0);
    // Two of them read everything: each 8 MiB reply, split over batches, is whole and right.
    for c in conns.iter_mut().take(2) {
        for i in 0..8 {
            assert_eq!(c.reply(), (0, i));
            let mut got = vec![0u8; len];
            c.s.read_exact(&mut got).unwrap();
            assert_same("a READ answered over several batches", &got, &data);
        }
    }
}

/// Structured replies split over batches (a tiny scratch, overflow blocks read with pread),
/// then sent from the overflow file's mappings: qemu-io reads data, holes and overflow blocks
/// with its pattern check.
#[test]
fn structured_replies_split_over_batches_read_right() {
    for mapped in [false, true] {
        structured_replies(mapped);
    }
}

fn structured_replies(mapped: bool) {
    let dir = TempDir::new(&format!("nbd-split-{mapped}"));
    raw_image(&dir.join("a.raw"), 1, 16 * M);
    let (_s, ports) = start(
        &dir,
        &format!("cache_ram_bytes_per_target = 65536\nreply_scratch_bytes_max = 16384\ncache_overflow_mapped = {mapped}"),
        "a.raw",
    );
    let o = Command::new("qemu-io")
        .args(["--image-opts", &format!("driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=v@q", ports.2)])
        .args(["-c", "write -P 7 0 4M", "-c", "write -z 1M 64k", "-c", "write -P 9 2M 5000"])
        .args(["-c", "read -P 7 0 1M", "-c", "read -P 0 1M 64k", "-c", "read -P 7 1114112 983040", "-c", "read -P 9 2M 5000"])
        .args(["-c", "read -P 7 2102152 2092152"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && !text.contains("Pattern verification failed") && !text.contains("error"), "{text}");
    assert_eq!(text.matches("read ").count(), 5, "{text}");
}

/// The chunk pool through the server: nbd.cache_ram_prefault_bytes commits RAM at start (logged,
/// gauged), a first boot writes into it (chunks reused, none fresh), and when the target boots
/// again its old cache's chunks come back warm and serve the new boot, which reads the image
/// and its own writes, never a byte the previous boot wrote.
#[test]
fn a_new_boot_reuses_the_old_boots_cache_ram_and_sees_none_of_its_bytes() {
    let dir = TempDir::new("nbd-pool");
    raw_image(&dir.join("a.raw"), 3, 16 * M);
    let image = pattern(3, 0, 16 * M as usize);
    let (s, ports) = start(&dir, "cache_ram_prefault_bytes = 1048576", "a.raw");
    let m = metrics(ports.1);
    assert_eq!(metric(&m, "bootfarm_nbd_cache_pool_warm_bytes"), M as f64, "the prefault is warm");
    assert!(s.log().contains("write-cache RAM committed"), "the prefault is logged");
    let mut b1 = Raw::go(ports.2, "v@pc1#boot1");
    let secret = vec![0x5au8; 512 * 1024];
    assert_eq!(b1.request(wire::CMD_WRITE, 1, 0, secret.len() as u32, &secret), (0, 1));
    let m = metrics(ports.1);
    assert_eq!(metric(&m, "bootfarm_nbd_cache_chunks_reused"), 2.0, "512 KiB = two warm chunks");
    assert_eq!(metric(&m, "bootfarm_nbd_cache_chunks_fresh"), 0.0);
    assert_eq!(metric(&m, "bootfarm_nbd_cache_pool_warm_bytes"), 512.0 * 1024.0);
    drop(b1);
    // The next boot of pc1 drops boot1's cache at once; its chunks go back warm.
    let mut b2 = Raw::go(ports.2, "v@pc1#boot2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&metrics(ports.1), "bootfarm_nbd_cache_pool_warm_bytes") < M as f64 {
        assert!(Instant::now() < deadline, "boot1's chunks did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_same("boot2 reads the image where boot1 wrote", &b2.read(2, 0, 512 * 1024), &image[..512 * 1024]);
    // Partial writes into pages that held boot1's bytes: the rest of each block is the image's.
    let mut model = image[..512 * 1024].to_vec();
    for (i, off) in [100u64, 4096 + 4000, 200_000, 300_001].into_iter().enumerate() {
        let d = pattern(40 + i as u64, 0, 300);
        assert_eq!(b2.request(wire::CMD_WRITE, 10 + i as u64, off, d.len() as u32, &d), (0, 10 + i as u64));
        model[off as usize..off as usize + 300].copy_from_slice(&d);
    }
    assert_same("boot2 reads the image and its own writes only", &b2.read(3, 0, 512 * 1024), &model);
    let m = metrics(ports.1);
    assert!(metric(&m, "bootfarm_nbd_cache_chunks_reused") >= 3.0, "boot2 got a warm chunk");
    assert_eq!(metric(&m, "bootfarm_nbd_cache_chunks_fresh"), 0.0);
}
