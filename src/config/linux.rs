//! `[vdisk.linux]`: how a Linux target boots a vdisk. `/ipxe` loads the kernel and initramfs
//! (files under tftp.root) and passes a command line built from the template, whose `{nbd}`
//! carries what the initramfs (contrib/initramfs/init) needs to mount the vdisk over NBD.

use serde::{Deserialize, Serialize};

/// Where a Linux target's writes live.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheSite {
    /// The server's per-target write cache: the root is mounted read-write over NBD.
    #[default]
    Server,
    /// The target's RAM: the vdisk is mounted read-only with an overlay on tmpfs on top, so the
    /// servers hold no state for the target and any of them can take its connection.
    Device,
}

impl CacheSite {
    pub fn name(self) -> &'static str {
        match self {
            CacheSite::Server => "server",
            CacheSite::Device => "device",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinuxBoot {
    /// The kernel, a file under tftp.root (served at /boot/<file>).
    pub kernel: String,
    /// The initramfs holding contrib/initramfs/init, a file under tftp.root.
    pub initrd: String,
    /// The kernel command line; `{ip}` becomes `ip=` with the address iPXE obtained, `{nbd}`
    /// the `bootfarm.*` keys (servers, port, export, cache). `{nbd}` is required.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default)]
    pub cache: CacheSite,
}

pub const CMDLINE_DEFAULT: &str = "{ip} {nbd}";
/// Template bytes: the expanded line must fit Linux's 2048-byte x86 COMMAND_LINE_SIZE with the
/// `{nbd}` keys (4 servers, a 46-character token) and iPXE's `ip=` added.
pub const CMDLINE_TEMPLATE_BYTES_MAX: usize = 1024;
/// Servers named on the command line, in failover order (PVS: up to 4 login servers).
pub const SERVERS_MAX: usize = 4;

fn default_cmdline() -> String {
    CMDLINE_DEFAULT.into()
}

/// A file name under tftp.root as a URL path: no traversal, nothing iPXE or a shell would
/// expand (`$`, spaces, quotes).
fn valid_file(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('/')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/+".contains(&b))
        && s.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

impl LinuxBoot {
    /// Checks the keys; an error is (key, value, why).
    pub fn validate(&self) -> Result<(), (&'static str, String, String)> {
        for (k, v) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if !valid_file(v) {
                return Err((
                    k,
                    format!("{v:?}"),
                    "must be a file under tftp.root: a relative path of letters, digits and . _ - + /, without '..'".into(),
                ));
            }
        }
        let t = &self.cmdline;
        let bad = |why: &str| Err(("cmdline", format!("{t:?}"), why.to_string()));
        if t.len() > CMDLINE_TEMPLATE_BYTES_MAX {
            return bad(&format!(
                "is {} bytes; at most {CMDLINE_TEMPLATE_BYTES_MAX} (Linux takes 2048 with the {{nbd}} keys added)",
                t.len()
            ));
        }
        if t.bytes().any(|b| b.is_ascii_control()) {
            return bad("holds a control character (a newline would end the iPXE command)");
        }
        let mut rest = t.as_str();
        let mut nbd = false;
        while let Some(i) = rest.find('{') {
            let Some(j) = rest[i..].find('}') else { return bad("has a '{' without '}'") };
            match &rest[i..i + j + 1] {
                "{nbd}" => nbd = true,
                "{ip}" => {}
                other => return bad(&format!("has the unknown placeholder {other}; known: {{ip}}, {{nbd}}")),
            }
            rest = &rest[i + j + 1..];
        }
        if !nbd {
            return bad("lacks {nbd}: without the bootfarm.* keys the initramfs cannot find its root");
        }
        Ok(())
    }

    /// The command line: `ip` replaces `{ip}`, `nbd` replaces `{nbd}`; runs of spaces that an
    /// empty replacement leaves are collapsed.
    pub fn expand(&self, ip: &str, nbd: &str) -> String {
        let line = self.cmdline.replace("{ip}", ip).replace("{nbd}", nbd);
        line.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(cmdline: &str) -> LinuxBoot {
        LinuxBoot { kernel: "linux/vmlinuz".into(), initrd: "linux/initrd.img".into(), cmdline: cmdline.into(), cache: CacheSite::Server }
    }

    #[test]
    fn templates_are_checked() {
        assert!(lb(CMDLINE_DEFAULT).validate().is_ok());
        assert!(lb("console=ttyS0 {ip} {nbd} quiet").validate().is_ok());
        assert_eq!(lb("console=ttyS0").validate().unwrap_err().0, "cmdline");
        assert!(lb("{nbd} {root}").validate().unwrap_err().2.contains("unknown placeholder {root}"));
        assert!(lb("{nbd} {ip").validate().unwrap_err().2.contains("without '}'"));
        assert!(lb("{nbd}\nshell").validate().unwrap_err().2.contains("control character"));
        // At the limit and one past it.
        let at = format!("{{nbd}}{}", " ".repeat(CMDLINE_TEMPLATE_BYTES_MAX - 5));
        assert!(lb(&at).validate().is_ok());
        assert!(lb(&format!("{at} ")).validate().unwrap_err().2.contains("at most 1024"));
    }

    #[test]
    fn files_stay_under_the_root() {
        for bad in ["", "/vmlinuz", "../vmlinuz", "a/../b", "a//b", "vm linuz", "vm$linuz", "./x"] {
            let mut l = lb(CMDLINE_DEFAULT);
            l.kernel = bad.into();
            assert_eq!(l.validate().unwrap_err().0, "kernel", "{bad:?}");
        }
        let mut l = lb(CMDLINE_DEFAULT);
        l.initrd = "x".repeat(256);
        assert_eq!(l.validate().unwrap_err().0, "initrd");
        l.initrd = "initrd.img-6.1.0-42-amd64".into();
        assert!(l.validate().is_ok());
    }

    #[test]
    fn expansion_collapses_empty_parts() {
        assert_eq!(lb("console=ttyS0 {ip} {nbd} quiet").expand("", "bootfarm.port=1"), "console=ttyS0 bootfarm.port=1 quiet");
        assert_eq!(lb(CMDLINE_DEFAULT).expand("ip=1.2.3.4::1.2.3.1:255.0.0.0:::off", "x"), "ip=1.2.3.4::1.2.3.1:255.0.0.0:::off x");
    }
}
