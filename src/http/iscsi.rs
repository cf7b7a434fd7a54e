//! The `/ipxe` script of a vdisk booted over iSCSI (`sanboot = "iscsi"`): `sanboot` with one
//! RFC 4173 root path per farm server in failover order (`iscsi:<server>::<port>:0:<iqn>`,
//! iPXE's multipath list: the first that answers serves), and an `initiator-iqn` carrying the
//! target's boot token (`iscsi::boot`), so the session finds the machine's write cache and the
//! iBFT hands the same name to the OS's initiator.

use crate::config::{Sanboot, Snapshot, Vdisk};

/// Whether `/ipxe` boots `vdisk` over iSCSI (configured so, and iSCSI is on).
pub fn wanted(snap: &Snapshot, vdisk: &str) -> bool {
    snap.config.server.iscsi_port != 0 && snap.config.vdisk.iter().any(|v| v.name == vdisk && v.sanboot == Sanboot::Iscsi)
}

/// An address as the server part of a root path (IPv6 in brackets).
fn server(a: &str) -> String {
    if a.contains(':') && !a.starts_with('[') {
        format!("[{a}]")
    } else {
        a.to_string()
    }
}

/// The script. `host` is this node as the client reached it (the Host header, port dropped),
/// `order` the farm's servers for this target, `token` its boot token when the MAC is known.
pub fn iscsi_script(snap: &Snapshot, vd: &Vdisk, host: Option<&str>, mac: Option<[u8; 6]>, order: &[usize], token: Option<&str>) -> String {
    let me = &snap.config.server;
    let iqn = snap.config.iscsi.target_iqn(&vd.name);
    let paths: Vec<String> = order
        .iter()
        .map(|&i| {
            let s = &snap.farm[i];
            let addr = match host {
                Some(h) if s.name == me.name => server(super::linux::host_only(h)),
                _ => server(&s.address.to_string()),
            };
            format!("iscsi:{addr}::{}:0:{iqn}", me.iscsi_port)
        })
        .collect();
    let names: Vec<&str> = order.iter().map(|&i| snap.farm[i].name.as_str()).collect();
    let target = mac.map(crate::nbd::token::mac_id).unwrap_or_else(|| "unknown".into());
    let mut s = format!(
        "#!ipxe\n# bootfarm node {} (configuration generation {}): vdisk {} over iSCSI for target {target}\n# servers in failover order: {}\n",
        me.name,
        snap.generation,
        vd.name,
        names.join(" ")
    );
    if let (Some(m), Some(t)) = (mac, token) {
        if let Some(name) = crate::iscsi::boot::initiator_iqn(&snap.config.iscsi.iqn_prefix, m, t) {
            s.push_str(&format!("set initiator-iqn {name}\n"));
        }
    }
    s.push_str(&format!(
        "echo bootfarm: booting vdisk {} ({} bytes) over iSCSI\nsanboot {} || goto failed\n:failed\necho bootfarm: sanboot failed, no server answered\nshell\n",
        vd.name,
        vd.chain.virtual_size(),
        paths.join(" ")
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Overrides};

    fn snap(extra: &str) -> (std::path::PathBuf, Snapshot) {
        let dir = std::env::temp_dir().join(format!("bootfarm-http-iscsi-{}-{}", std::process::id(), extra.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        std::fs::write(dir.join("a.raw"), vec![0u8; 1 << 20]).unwrap();
        let text = format!(
            "[server]\nname = \"n1\"\niscsi_port = 3261\n[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"win10\"\npath = \"a.raw\"\nsanboot = \"iscsi\"\n[[vdisk]]\nname = \"lab\"\npath = \"a.raw\"\n{extra}"
        );
        let s = config::from_text(&dir.join("b.toml"), &text, &Overrides::default(), 1, None).unwrap();
        (dir, s)
    }

    #[test]
    fn a_multipath_sanboot_with_the_tokens_initiator_name() {
        let (dir, s) =
            snap("[[farm.server]]\nname = \"n1\"\naddress = \"10.0.0.1\"\n[[farm.server]]\nname = \"n2\"\naddress = \"fd00::2\"\n");
        assert!(wanted(&s, "win10") && !wanted(&s, "lab"));
        let vd = s.vdisk("win10").unwrap();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let tok = crate::nbd::token::issue(b"0123456789abcdef", [3; 16], 2_000_000_000, mac, "10.0.0.50".parse().unwrap(), "win10");
        let script = iscsi_script(&s, vd, Some("10.0.0.1:8080"), Some(mac), &[1, 0], Some(&tok));
        let sanboot = script.lines().find(|l| l.starts_with("sanboot ")).unwrap();
        assert_eq!(
            sanboot,
            "sanboot iscsi:[fd00::2]::3261:0:iqn.2026-12.org.bootfarm:win10 iscsi:10.0.0.1::3261:0:iqn.2026-12.org.bootfarm:win10 || goto failed"
        );
        let iqn = script.lines().find_map(|l| l.strip_prefix("set initiator-iqn ")).unwrap();
        assert!(config::valid_iqn(iqn), "{iqn}");
        assert_eq!(crate::iscsi::boot::token_of("iqn.2026-12.org.bootfarm", iqn).as_deref(), Some(tok.as_str()));
        assert!(script.starts_with("#!ipxe\n"));
        // Without a MAC: no initiator name is set (iPXE's own, the cache is per initiator).
        let script = iscsi_script(&s, vd, None, None, &[0], None);
        assert!(!script.contains("initiator-iqn"));
        assert!(script.contains("sanboot iscsi:10.0.0.1::3261:0:iqn.2026-12.org.bootfarm:win10 ||"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn iscsi_off_boots_over_http() {
        let (dir, mut s) = snap("");
        s.config.server.iscsi_port = 0;
        assert!(!wanted(&s, "win10"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
