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
pub(crate) fn host_only(h: &str) -> &str {
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

/// The vdisk's Linux boot in `/api/status` (a `, "linux": {...}` member): its files and where
/// a target's writes live, in words an operator can act on.
pub fn status_json(lb: &LinuxBoot) -> String {
    let writes = match lb.cache {
        CacheSite::Server => {
            "in the serving node's write cache for that boot (export <vdisk>@<boot token>): kept across reconnects to that node, lost on a failover to another node, dropped when the target boots again"
        }
        CacheSite::Device => {
            "in the target's RAM (read-only root under an overlay on tmpfs): the servers hold none, any server of the list can take over, lost at reboot"
        }
    };
    format!(
        ", \"linux\": {{\"kernel\": {}, \"initrd\": {}, \"cache\": \"{}\", \"writes\": {}}}",
        super::json_str(&lb.kernel),
        super::json_str(&lb.initrd),
        lb.cache.name(),
        super::json_str(writes)
    )
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

    /// A farm of three: the script tries each server in the target's order for the kernel,
    /// and names them in that order for NBD, this node as the client reached it.
    #[test]
    fn the_script_follows_the_failover_order() {
        let dir = std::env::temp_dir().join(format!("bootfarm-http-linux-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        std::fs::write(dir.join("disk.raw"), vec![0u8; 1 << 20]).unwrap();
        let text = "[server]\nname = \"b\"\nnbd_port = 10810\n[tftp]\nroot = \"boot\"\n\
            [[vdisk]]\nname = \"lab\"\npath = \"disk.raw\"\n[vdisk.linux]\nkernel = \"k\"\ninitrd = \"linux/i.img\"\ncache = \"device\"\n\
            [[farm.server]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[farm.server]]\nname = \"b\"\naddress = \"10.0.0.2\"\n\
            [[farm.server]]\nname = \"c\"\naddress = \"10.0.0.3\"\nhttp_port = 81\n";
        let snap = crate::config::from_text(&dir.join("b.toml"), text, &Default::default(), 1, None).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let vd = snap.vdisk("lab").unwrap();
        let lb = snap.linux("lab").unwrap();
        let s = linux_script(&snap, vd, lb, Some("192.168.7.2:8080"), "aa:bb", &[2, 1, 0], "lab");
        let kernels: Vec<&str> = s.lines().filter(|l| l.starts_with("kernel ")).collect();
        assert_eq!(kernels.len(), 3, "{s}");
        assert!(kernels[0].starts_with("kernel http://10.0.0.3:81/boot/k?vdisk=lab&mac=aa:bb initrd=i.img "), "{s}");
        assert!(kernels[1].starts_with("kernel http://192.168.7.2:8080/boot/k?"), "this node as reached: {s}");
        assert!(kernels[2].starts_with("kernel http://10.0.0.1:8080/boot/k?"), "{s}");
        assert!(kernels[0].ends_with(" || goto s1") && kernels[2].ends_with(" || goto failed"), "{s}");
        assert!(
            kernels[0]
                .contains(" bootfarm.servers=10.0.0.3,192.168.7.2,10.0.0.1 bootfarm.port=10810 bootfarm.export=lab bootfarm.cache=device "),
            "{s}"
        );
        assert!(s.contains("\n:s1\nkernel ") && s.contains("\n:failed\n"), "{s}");
        // More servers than the command line names: the first SERVERS_MAX.
        let s = linux_script(&snap, vd, lb, None, "", &[0, 1, 2, 0, 1], "lab");
        assert!(s.contains("bootfarm.servers=10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.1 "), "{s}");
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_only("10.0.2.2:8080"), "10.0.2.2");
        assert_eq!(host_only("10.0.2.2"), "10.0.2.2");
        assert_eq!(host_only("[fd00::1]:8080"), "fd00::1");
        assert_eq!(host_only("boot.example:80"), "boot.example");
    }
}
