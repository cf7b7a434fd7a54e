//! `bootfarm config check` and `config example`: precise errors for bad files (file, key, value,
//! why, exit status 1), the effective configuration for good ones.

mod common;
use common::*;

fn store(dir: &TempDir) {
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::create_dir_all(dir.join("vdisks")).unwrap();
    let v = dir.join("vdisks/a.vhdx");
    if !v.exists() {
        assert!(bootfarm(&["vdisk", "create", v.to_str().unwrap(), "--size", "8M", "--block-size", "1M"]).status.success());
    }
}

const GOOD: &str = r#"
[server]
name = "node1"
listen = "127.0.0.1"
tftp_port = 6969
http_port = 8080
nbd_port = 10809

[tftp]
root = "boot"

[[vdisk]]
name = "win10"
path = "vdisks/a.vhdx"

[[farm.server]]
name = "node1"
address = "127.0.0.1"
power = 1.0
"#;

fn check(dir: &TempDir, text: &str) -> (bool, String, String) {
    let f = dir.join("bootfarm.toml");
    std::fs::write(&f, text).unwrap();
    let out = bootfarm(&["config", "check", f.to_str().unwrap()]);
    assert!(out.status.code() == Some(0) || out.status.code() == Some(1), "never a panic: {:?}", out.status);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn good_file_prints_effective_configuration() {
    let dir = TempDir::new("cfg-good");
    store(&dir);
    let (ok, out, err) = check(&dir, GOOD);
    assert!(ok, "{err}");
    assert!(out.contains("valid"), "{out}");
    assert!(out.contains("blksize_max = 1468"), "defaults are filled in:\n{out}");
    assert!(out.contains(&format!("{}", dir.join("boot").canonicalize().unwrap().display())), "paths are resolved:\n{out}");
    assert!(out.contains("# vdisk win10: 8388608 bytes"), "{out}");
}

#[test]
fn example_is_valid_apart_from_its_example_paths() {
    let out = bootfarm(&["config", "example"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // Point the example's paths at a real store; everything else must be accepted as printed.
    let dir = TempDir::new("cfg-example");
    store(&dir);
    let text = text.replace("/srv/bootfarm/boot", "boot").replace("/srv/bootfarm/vdisks/win10.vhdx", "vdisks/a.vhdx");
    let (ok, _, err) = check(&dir, &text);
    assert!(ok, "the printed example must be a valid file: {err}");
    // And its documented values are the defaults.
    let parsed: bootfarm::config::Config = toml::from_str(&text).unwrap();
    let d = bootfarm::config::Config::default();
    assert_eq!(parsed.server, d.server);
    assert_eq!(parsed.http, d.http);
    assert_eq!(parsed.nbd, d.nbd);
    assert_eq!(parsed.iscsi, d.iscsi);
    assert_eq!(parsed.image, d.image);
    assert_eq!(parsed.pxe, d.pxe);
    // Every [tftp] key but the root (an example path) is documented at its default.
    assert_eq!(bootfarm::config::Tftp { root: d.tftp.root.clone(), ..parsed.tftp }, d.tftp);
}

#[test]
fn bad_files_get_precise_errors() {
    let dir = TempDir::new("cfg-bad");
    store(&dir);
    let cases: &[(&str, &str, &[&str])] = &[
        ("syntax", "[server\nname = 1", &["line 1", "bootfarm.toml"]),
        ("pxe boot file", "[pxe]\nbios_boot_file = \"../etc/passwd\"", &["pxe.bios_boot_file", "no '..'"]),
        ("pxe ports", "[pxe]\npxe_port = 67", &["pxe.pxe_port = 67", "same port as pxe.proxy_port"]),
        ("pxe rate", "[pxe]\nanswers_per_mac_per_s = 0", &["pxe.answers_per_mac_per_s = 0", "refuse every client"]),
        ("unknown key", "[server]\nnmae = \"x\"", &["unknown field `nmae`", "line 2"]),
        ("wrong type", "[server]\ntftp_port = \"sixty-nine\"", &["invalid type", "line 2"]),
        ("port out of range", "[server]\nhttp_port = 70000", &["line 2"]),
        ("bad address", "[server]\nlisten = \"127.0.0.300\"", &["server.listen = \"127.0.0.300\": not an IP address", "(line 2)"]),
        ("not an ip", "# node\n[server]\nlisten = \"not-an-ip\"", &["bootfarm.toml: server.listen = \"not-an-ip\": not an IP address", "(line 3)"]),
        ("wrong type in a vdisk", "[[vdisk]]\nname = \"a\"\npath = \"a\"\n[[vdisk]]\nname = 2\npath = \"b\"", &["vdisk[1].name = 2: invalid type", "(line 5)"]),
        ("missing field", "[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"a\"", &["vdisk[0]: missing field `path` (line 3)"]),
        ("port zero", "[server]\nnbd_port = 0", &["server.nbd_port = 0", "port 0"]),
        ("port clash", "[server]\nhttp_port = 9000\nnbd_port = 9000", &["server.nbd_port = 9000", "same TCP port"]),
        ("bad node name", "[server]\nname = \"node 1\"", &["server.name = \"node 1\"", "letters, digits"]),
        ("too many workers", "[server]\nworkers = 5000", &["server.workers = 5000", "at most 1024"]),
        ("bad steer", "[server]\nsteer = \"rss\"", &["unknown variant `rss`", "hash", "cpu", "line 2"]),
        ("missing root", "[tftp]\nroot = \"nowhere\"", &["tftp.root", "nowhere", "No such file"]),
        ("blksize", "[tftp]\nroot = \"boot\"\nblksize_max = 4", &["tftp.blksize_max = 4", "8 to 65464"]),
        ("windowsize", "[tftp]\nroot = \"boot\"\nwindowsize_max = 0", &["tftp.windowsize_max = 0", "1 to 65535"]),
        ("timeout option cap", "[tftp]\nroot = \"boot\"\ntimeout_option_max_s = 300", &["tftp.timeout_option_max_s = 300", "between 1 and 255"]),
        ("handshake retries", "[tftp]\nroot = \"boot\"\nhandshake_retries_max = 9", &["tftp.handshake_retries_max = 9", "at most tftp.retries_max"]),
        ("stall", "[tftp]\nroot = \"boot\"\nstall_max_ms = 10", &["tftp.stall_max_ms = 10", "at least tftp.timeout_ms"]),
        ("lifetime", "[tftp]\nroot = \"boot\"\ntransfer_lifetime_max_ms = 20000", &["tftp.transfer_lifetime_max_ms = 20000", "at least tftp.stall_max_ms"]),
        ("plain subnets", "[tftp]\nroot = \"boot\"\nplain_rrq_subnets = [\"10.0.0.0\"]", &["tftp.plain_rrq_subnets = \"10.0.0.0\"", "CIDR"]),
        ("zero rate", "[tftp]\nroot = \"boot\"\nrequests_per_ip_per_s = 0", &["tftp.requests_per_ip_per_s = 0", "refuse every client"]),
        ("zero limit", "[tftp]\nroot = \"boot\"\n[http]\nconnections_max = 0", &["http.connections_max = 0", "refuse every client"]),
        ("nbd request size", "[tftp]\nroot = \"boot\"\n[nbd]\nrequest_bytes_max = 5000", &["nbd.request_bytes_max = 5000", "power of two"]),
        ("bad mode", "[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"a\"\npath = \"vdisks/a.vhdx\"\nmode = \"shared\"", &["unknown variant `shared`", "standard"]),
        ("bad vdisk name", "[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"a/b\"\npath = \"vdisks/a.vhdx\"", &["vdisk[0].name = \"a/b\"", "URL path"]),
        ("duplicate vdisk", "[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"a\"\npath = \"vdisks/a.vhdx\"\n[[vdisk]]\nname = \"a\"\npath = \"vdisks/a.vhdx\"", &["vdisk[1].name = \"a\"", "unique"]),
        ("missing image", "[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"a\"\npath = \"vdisks/none.vhdx\"", &["vdisk[0].path", "none.vhdx", "No such file"]),
        ("corrupt image", "[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"a\"\npath = \"vdisks/bad.vhdx\"", &["vdisk[0].path", "bad.vhdx", "not a VHDX image"]),
        ("power", "[tftp]\nroot = \"boot\"\n[[farm.server]]\nname = \"node1\"\naddress = \"127.0.0.1\"\npower = -1.0", &["farm.server[0].power = -1", "positive weight"]),
        ("duplicate server", "[tftp]\nroot = \"boot\"\n[[farm.server]]\nname = \"node1\"\naddress = \"127.0.0.1\"\n[[farm.server]]\nname = \"node1\"\naddress = \"127.0.0.2\"", &["farm.server[1].name", "listed twice"]),
        ("bad subnet", "[tftp]\nroot = \"boot\"\n[[farm.server]]\nname = \"node1\"\naddress = \"127.0.0.1\"\nsubnets = [\"10.0.0.0/33\"]", &["farm.server[0].subnets = \"10.0.0.0/33\"", "CIDR"]),
        ("unknown vdisk in farm", "[tftp]\nroot = \"boot\"\n[[farm.server]]\nname = \"node1\"\naddress = \"127.0.0.1\"\nvdisks = [\"nope\"]", &["farm.server[0].vdisks = \"nope\"", "names no [[vdisk]]"]),
        ("node not in farm", "[tftp]\nroot = \"boot\"\n[[farm.server]]\nname = \"other\"\naddress = \"127.0.0.1\"", &["server.name = \"node1\"", "its own farm"]),
        ("epsilon", "[tftp]\nroot = \"boot\"\n[farm]\nload_epsilon = 20.0", &["farm.load_epsilon = 20", "between 0 and 10"]),
        ("mappings", "[tftp]\nroot = \"boot\"\n[image]\nmappings_max = 1", &["image.mappings_max = 1", "between 16 and"]),
        ("iscsi port clash", "[server]\nhttp_port = 9000\niscsi_port = 9000", &["server.iscsi_port = 9000", "same TCP port as server.http_port"]),
        ("iqn prefix", "[iscsi]\niqn_prefix = \"bootfarm\"", &["iscsi.iqn_prefix = \"bootfarm\"", "qualified name"]),
        ("iscsi burst", "[iscsi]\nfirst_burst_length = 2000000", &["iscsi.first_burst_length = 2000000", "at most iscsi.max_burst_length"]),
        ("iscsi segment", "[iscsi]\nmax_recv_data_segment_length = 100", &["iscsi.max_recv_data_segment_length = 100", "between 512"]),
        ("chap without secret", "[iscsi]\nchap_user = \"u\"", &["iscsi.chap_secret_file", "needed with iscsi.chap_user"]),
        ("chap secret short", "[tftp]\nroot = \"boot\"\n[iscsi]\nchap_user = \"u\"\nchap_secret_file = \"short.secret\"", &["iscsi.chap_secret_file", "holds 5 bytes", "12 to 255"]),
        ("iscsi vdisk name", "[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"Win_10\"\npath = \"vdisks/a.vhdx\"", &["vdisk[0].name = \"Win_10\"", "iqn.2026-12.org.bootfarm:Win_10", "server.iscsi_port = 0"]),
        ("bad sanboot", "[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"a\"\npath = \"vdisks/a.vhdx\"\nsanboot = \"nfs\"", &["unknown variant `nfs`", "iscsi"]),
        ("private raw", "[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"a\"\npath = \"vdisks/a.raw\"\nmode = \"private\"", &["vdisk[0].mode", "VHD or VHDX"]),
    ];
    std::fs::write(dir.join("vdisks/bad.vhdx"), vec![0u8; 4096]).unwrap();
    std::fs::write(dir.join("vdisks/a.raw"), vec![0u8; 65536]).unwrap();
    std::fs::write(dir.join("short.secret"), "abcde\n").unwrap();
    for (what, text, expect) in cases {
        let (ok, _, err) = check(&dir, text);
        assert!(!ok, "{what}: accepted a bad file");
        assert!(err.contains("bootfarm.toml"), "{what}: error must name the file: {err}");
        for e in *expect {
            assert!(err.contains(e), "{what}: expected {e:?} in: {err}");
        }
    }
    let missing = bootfarm(&["config", "check", dir.join("absent.toml").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("absent.toml: cannot read"));
}
