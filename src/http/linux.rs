//! The `/ipxe` script of a Linux vdisk (`[vdisk.linux]`): `kernel`, `initrd`, `boot` from the
//! target's servers in failover order, with a command line that tells the initramfs
//! (contrib/initramfs/init) which NBD servers to try, on which port, with which export name.

use crate::config::{CacheSite, LinuxBoot, Snapshot, Vdisk, SERVERS_MAX};

/// The NBD export name every connection of this boot uses. With a boot token (the target's
/// MAC was given) the token names the target and is itself the boot: each `/ipxe` fetch is a
/// new boot whose writes survive reconnects. A device-cache boot writes nothing on the
/// servers, so it names the vdisk alone and any server may take its connection.
pub fn nbd_export(vdisk: &str, cache: CacheSite, token: Option<&str>) -> String {
    match (cache, token) {
        (CacheSite::Server, Some(t)) => format!("{vdisk}@{t}"),
        _ => vdisk.to_string(),
    }
}

/// `host[:port]` from a Host header, without the port and IPv6 brackets: what nbd-client takes.
fn host_only(h: &str) -> &str {
    if let Some(r) = h.strip_prefix('[') {
        return r.split(']').next().unwrap_or(r);
    }
    h.rsplit_once(':').map_or(h, |(a, _)| a)
}

/// The script. `host` is this node as the client reached it (the Host header), `order` the
/// farm's servers for this target, first the placed one. Every server of the list is tried in
/// turn for the kernel and initramfs; the command line names the first [`SERVERS_MAX`] of
/// them for NBD, in the same order.
pub fn linux_script(snap: &Snapshot, vd: &Vdisk, lb: &LinuxBoot, host: Option<&str>, mac: &str, order: &[usize], export: &str) -> String {
    let me = &snap.config.server;
    let servers: Vec<(String, String)> = order
        .iter()
        .map(|&i| {
            let s = &snap.farm[i];
            match host {
                Some(h) if s.name == me.name => (h.to_string(), host_only(h).to_string()),
                _ => (super::host_port(s.address, s.http_port), s.address.to_string()),
            }
        })
        .collect();
    let nbd_hosts: Vec<&str> = servers.iter().take(SERVERS_MAX).map(|(_, a)| a.as_str()).collect();
    let nbd = format!(
        "bootfarm.servers={} bootfarm.port={} bootfarm.export={export} bootfarm.cache={}",
        nbd_hosts.join(","),
        me.nbd_port,
        lb.cache.name()
    );
    // iPXE expands ${ip}, ${gateway}, ${netmask} from the DHCP answer it got, so the initramfs
    // need not ask again (the kernel's own ip= autoconfiguration does not run: e1000 and the
    // like are modules, loaded by the initramfs).
    let cmdline = lb.expand("ip=${ip}::${gateway}:${netmask}:::off", &nbd);
    let initrd_name = lb.initrd.rsplit('/').next().unwrap_or(&lb.initrd);
    let q = if mac.is_empty() { format!("?vdisk={}", vd.name) } else { format!("?vdisk={}&mac={mac}", vd.name) };
    let mut s = format!(
        "#!ipxe\n# bootfarm node {} (configuration generation {}): Linux vdisk {} for target {}\n# servers in failover order: {}\n# root over NBD, export {export}, write cache on the {}\n",
        me.name,
        snap.generation,
        vd.name,
        if mac.is_empty() { "unknown" } else { mac },
        order.iter().map(|&i| snap.farm[i].name.as_str()).collect::<Vec<_>>().join(" "),
        lb.cache.name(),
    );
    s.push_str(&format!("echo bootfarm: booting Linux vdisk {} ({} bytes) with root over NBD\n", vd.name, vd.chain.virtual_size()));
    for (n, (hp, _)) in servers.iter().enumerate() {
        let next = if n + 1 < servers.len() { format!("s{}", n + 1) } else { "failed".into() };
        s.push_str(&format!(
            ":s{n}\nkernel http://{hp}/boot/{}{q} initrd={initrd_name} {cmdline} || goto {next}\ninitrd http://{hp}/boot/{}{q} || goto {next}\nboot || goto {next}\n",
            lb.kernel, lb.initrd
        ));
    }
    s.push_str(":failed\necho bootfarm: no server gave the kernel and initramfs\nshell\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_names_the_boot_only_with_a_server_cache() {
        assert_eq!(nbd_export("lab", CacheSite::Server, Some("TOK")), "lab@TOK");
        assert_eq!(nbd_export("lab", CacheSite::Server, None), "lab");
        assert_eq!(nbd_export("lab", CacheSite::Device, Some("TOK")), "lab");
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_only("10.0.2.2:8080"), "10.0.2.2");
        assert_eq!(host_only("10.0.2.2"), "10.0.2.2");
        assert_eq!(host_only("[fd00::1]:8080"), "fd00::1");
        assert_eq!(host_only("boot.example:80"), "boot.example");
    }
}
