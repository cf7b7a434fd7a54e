//! The `/ipxe` script of a vdisk booted over iSCSI (`sanboot = "iscsi"`): `sanboot` with one
//! `iscsi:<server>::<port>:0:<target IQN>` URI (RFC 4173 root path) per server of the
//! target's list, in failover order; iPXE fails over between them and publishes an iBFT that
//! the OS's initiator (Windows, open-iscsi's `iscsistart -b`) logs in from.

use crate::config::{Snapshot, Vdisk};

/// The script. `host` is this node as the client reached it (the Host header), `order` the
/// farm's servers for this target, first the placed one; every server's iSCSI port is this
/// node's `server.iscsi_port` (as NBD's port is shared). With a boot token the initiator name
/// carries it (`iscsi::boot`): iPXE logs in with it and hands it to the OS in the iBFT, so
/// every login of this boot reaches the same write cache.
pub fn iscsi_script(snap: &Snapshot, vd: &Vdisk, host: Option<&str>, mac: &str, order: &[usize], initiator: Option<&str>) -> String {
    let me = &snap.config.server;
    let iqn = snap.config.iscsi.target_iqn(&vd.name);
    let uris: Vec<String> = order
        .iter()
        .map(|&i| {
            let s = &snap.farm[i];
            let a = match host {
                Some(h) if s.name == me.name => super::linux::host_only(h).to_string(),
                _ => s.address.to_string(),
            };
            // An IPv6 literal is bracketed in the URI (iPXE's parser splits on ':').
            let a = if a.contains(':') { format!("[{a}]") } else { a };
            format!("iscsi:{a}::{}:0:{iqn}", me.iscsi_port)
        })
        .collect();
    let mut s = format!(
        "#!ipxe\n# bootfarm node {} (configuration generation {}): vdisk {} for target {}\n# servers in failover order: {}\n",
        me.name,
        snap.generation,
        vd.name,
        if mac.is_empty() { "unknown" } else { mac },
        order.iter().map(|&i| snap.farm[i].name.as_str()).collect::<Vec<_>>().join(" "),
    );
    if let Some(i) = initiator {
        s.push_str(&format!("set initiator-iqn {i}\n"));
    }
    s.push_str(&format!(
        "echo bootfarm: booting vdisk {} ({} bytes) over iSCSI\nsanboot {} || goto failed\n:failed\necho bootfarm: sanboot failed, no server answered\nshell\n",
        vd.name,
        vd.chain.virtual_size(),
        uris.join(" ")
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Overrides};

    #[test]
    fn a_multipath_sanboot_with_the_tokens_initiator_name() {
        let dir = std::env::temp_dir().join(format!("bootfarm-http-iscsi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        std::fs::write(dir.join("a.raw"), vec![0u8; 1 << 20]).unwrap();
        let text = "[server]\nname = \"n1\"\niscsi_port = 3261\n[tftp]\nroot = \"boot\"\n[[vdisk]]\nname = \"win10\"\npath = \"a.raw\"\nsanboot = \"iscsi\"\n\
                    [[farm.server]]\nname = \"n1\"\naddress = \"10.0.0.1\"\n[[farm.server]]\nname = \"n2\"\naddress = \"fd00::2\"\n";
        let s = config::from_text(&dir.join("b.toml"), text, &Overrides::default(), 1, None).unwrap();
        let vd = s.vdisk("win10").unwrap();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let tok = crate::nbd::token::issue(b"0123456789abcdef", [3; 16], 2_000_000_000, mac, "10.0.0.50".parse().unwrap(), "win10");
        let name = crate::iscsi::boot::initiator_iqn("iqn.2026-12.org.bootfarm", mac, &tok).unwrap();
        let script = iscsi_script(&s, vd, Some("10.0.0.1:8080"), "52:54:00:12:34:56", &[1, 0], Some(&name));
        let sanboot = script.lines().find(|l| l.starts_with("sanboot ")).unwrap();
        assert_eq!(
            sanboot,
            "sanboot iscsi:[fd00::2]::3261:0:iqn.2026-12.org.bootfarm:win10 iscsi:10.0.0.1::3261:0:iqn.2026-12.org.bootfarm:win10 || goto failed"
        );
        let iqn = script.lines().find_map(|l| l.strip_prefix("set initiator-iqn ")).unwrap();
        assert!(config::valid_iqn(iqn), "{iqn}");
        assert_eq!(crate::iscsi::boot::token_of("iqn.2026-12.org.bootfarm", iqn).as_deref(), Some(tok.as_str()));
        let script = iscsi_script(&s, vd, None, "", &[0], None);
        assert!(!script.contains("initiator-iqn"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
