//! Bootstrap files as the running binary serves them over TFTP (curl, tftp-hpa) and HTTP /boot
//! (curl) while they change under it: a file replaced by rename is served anew once the worker's
//! entry has aged past `bootfiles::TRUST` (1 s), a served name swapped for a symlink that leaves
//! the root is refused from then on, and `..` inside a symlink is refused while a symlink that
//! stays inside is served. Each name is opened through the ring beneath the root's descriptor.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// Past bootfiles::TRUST, with room for a slow machine.
const AGED: Duration = Duration::from_millis(1500);

struct Fixture {
    dir: TempDir,
    _server: Server,
    tftp: u16,
    http: u16,
}

fn fixture() -> Fixture {
    let dir = TempDir::new("bootfiles");
    std::fs::create_dir_all(dir.join("boot/sub")).unwrap();
    std::fs::write(dir.join("boot/a.bin"), pattern(1, 0, 3000)).unwrap();
    std::fs::write(dir.join("boot/b.bin"), pattern(2, 0, 2000)).unwrap();
    std::fs::write(dir.join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink("../../secret", dir.join("boot/sub/up")).unwrap();
    std::os::unix::fs::symlink("../b.bin", dir.join("boot/sub/b")).unwrap();
    let (tftp, http, nbd) = (free_port(), free_port(), free_port());
    // One worker: every request meets the same per-worker table.
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1\"\ntftp_port = {tftp}\nhttp_port = {http}\nnbd_port = {nbd}\nworkers = 1\n[tftp]\nroot = \"boot\"\n"
    );
    std::fs::write(dir.join("bootfarm.toml"), cfg).unwrap();
    let server = Server::start(&["--config", dir.join("bootfarm.toml").to_str().unwrap()]);
    Fixture { dir, _server: server, tftp, http }
}

/// (curl exit status, bytes) of a TFTP fetch with blksize 1432, as iPXE asks.
fn tftp(f: &Fixture, name: &str) -> (bool, Vec<u8>) {
    let out = f.dir.join("got.tftp");
    let _ = std::fs::remove_file(&out);
    let st = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--tftp-blksize", "1432", "-o", out.to_str().unwrap()])
        .arg(format!("tftp://127.0.0.1:{}/{name}", f.tftp))
        .status()
        .unwrap();
    (st.success(), std::fs::read(&out).unwrap_or_default())
}

/// (HTTP status, body) of GET /boot/<name>.
fn http(f: &Fixture, name: &str) -> (u16, Vec<u8>) {
    let out = f.dir.join("got.http");
    let o = Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", out.to_str().unwrap(), "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/boot/{name}", f.http))
        .output()
        .unwrap();
    (String::from_utf8_lossy(&o.stdout).parse().unwrap_or(0), std::fs::read(&out).unwrap_or_default())
}

#[test]
fn a_file_replaced_by_rename_is_served_anew_over_tftp_and_http() {
    let f = fixture();
    assert_eq!(tftp(&f, "a.bin"), (true, pattern(1, 0, 3000)));
    assert_eq!(http(&f, "a.bin"), (200, pattern(1, 0, 3000)));
    // Replaced the safe way (a new file renamed over the old name) while its entry is fresh.
    let tmp = f.dir.join("boot/.a.new");
    std::fs::write(&tmp, pattern(9, 0, 4500)).unwrap();
    std::fs::rename(&tmp, f.dir.join("boot/a.bin")).unwrap();
    std::thread::sleep(AGED);
    assert_same("tftp after the rename", &tftp(&f, "a.bin").1, &pattern(9, 0, 4500));
    let (status, body) = http(&f, "a.bin");
    assert_eq!(status, 200);
    assert_same("http after the rename", &body, &pattern(9, 0, 4500));
    // Gone: refused once the entry has aged.
    std::fs::remove_file(f.dir.join("boot/a.bin")).unwrap();
    std::thread::sleep(AGED);
    assert!(!tftp(&f, "a.bin").0, "a removed file is not served over TFTP");
    assert_eq!(http(&f, "a.bin").0, 404);
}

#[test]
fn a_served_name_swapped_for_an_escaping_symlink_is_refused() {
    let f = fixture();
    assert_eq!(http(&f, "b.bin"), (200, pattern(2, 0, 2000)));
    assert_eq!(tftp(&f, "b.bin"), (true, pattern(2, 0, 2000)));
    let link = f.dir.join("boot/.b.link");
    std::os::unix::fs::symlink(f.dir.join("secret"), &link).unwrap();
    std::fs::rename(&link, f.dir.join("boot/b.bin")).unwrap();
    std::thread::sleep(AGED);
    let (ok, got) = tftp(&f, "b.bin");
    assert!(!ok && got.is_empty(), "refused over TFTP, nothing of the secret sent");
    let (status, body) = http(&f, "b.bin");
    assert_eq!(status, 404);
    assert!(!String::from_utf8_lossy(&body).contains("outside the root"));
    // `..` inside a symlink leaves the root: refused; a relative symlink that stays inside
    // (sub/b -> ../b.bin, now itself the escaping link) follows what it names.
    assert!(!tftp(&f, "sub/up").0);
    assert_eq!(http(&f, "sub/up").0, 404);
    assert_eq!(http(&f, "sub/b").0, 404, "through a link inside to the link that leaves");
    std::fs::write(f.dir.join("boot/b.bin.new"), pattern(3, 0, 100)).unwrap();
    std::fs::rename(f.dir.join("boot/b.bin.new"), f.dir.join("boot/b.bin")).unwrap();
    std::thread::sleep(AGED);
    assert_eq!(http(&f, "sub/b"), (200, pattern(3, 0, 100)), "a link inside the root is served");
    assert_eq!(tftp(&f, "sub/b"), (true, pattern(3, 0, 100)));
}
