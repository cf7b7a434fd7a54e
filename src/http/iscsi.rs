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
