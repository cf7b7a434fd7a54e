//! The `[pxe]` section: the ProxyDHCP service (src/dhcp) that tells PXE, UEFI HTTP Boot and
//! iPXE clients which farm server boots them, beside the site's own DHCP server.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pxe {
    /// Off unless configured: a ProxyDHCP answers every PXE client on the segment, which a
    /// demo or a test run on a shared network must not do by surprise.
    pub enabled: bool,
    /// Address the sockets bind. Broadcast DISCOVERs reach only a socket bound to 0.0.0.0 (or
    /// the broadcast address), so keep the default and choose the segment with `interface`.
    pub listen: Ipv4Addr,
    /// Interface to serve (SO_BINDTODEVICE, needs CAP_NET_RAW or root); empty = all.
    pub interface: String,
    /// UDP port of DHCP DISCOVERs (67; needs CAP_NET_BIND_SERVICE below 1024).
    pub proxy_port: u16,
    /// UDP port of PXE boot-server requests (4011, what UEFI firmware asks after an offer
    /// without option 43); 0 = not served.
    pub pxe_port: u16,
    /// Where broadcast answers go (68: the DHCP client port). Only tests change it.
    pub client_port: u16,
    /// Address named as this server (option 54); unset = the address of the interface the
    /// request arrived on.
    pub server_address: Option<Ipv4Addr>,
    /// BIOS PXE (arch 0): the network boot program fetched over TFTP from tftp.root.
    pub bios_boot_file: String,
    /// UEFI PXE on x64 (arch 7, 9): the EFI program fetched over TFTP.
    pub uefi_boot_file: String,
    /// UEFI HTTP Boot on x64 (arch 16): the EFI program fetched from /boot/ over HTTP.
    pub http_boot_file: String,
    /// UEFI PXE clients get their boot file in the DHCPACK on `pxe_port` (PXE 2.1 boot-server
    /// discovery, what EDK2 expects of a proxy); false = in the offer itself, with option 43
    /// {6: 8} as for BIOS clients (one packet fewer, no port 4011).
    pub uefi_via_pxe_port: bool,
    /// Requests forwarded by a DHCP relay (giaddr set): answer them back through the relay, or
    /// ignore them (a relay that forwards to the site's DHCP server and to the farm).
    pub relay: Relay,
    /// Answers one client (MAC) gets per second, and in a burst; above, requests are dropped
    /// and counted. A PXE boot through iPXE takes ~6 answers within seconds.
    pub answers_per_mac_per_s: u32,
    pub answers_per_mac_burst: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Relay {
    #[default]
    Answer,
    Ignore,
}

impl Default for Pxe {
    fn default() -> Self {
        Pxe {
            enabled: false,
            listen: Ipv4Addr::UNSPECIFIED,
            interface: String::new(),
            proxy_port: 67,
            pxe_port: 4011,
            client_port: 68,
            server_address: None,
            bios_boot_file: "undionly.kpxe".into(),
            uefi_boot_file: "ipxe.efi".into(),
            http_boot_file: "ipxe.efi".into(),
            uefi_via_pxe_port: true,
            relay: Relay::Answer,
            answers_per_mac_per_s: 4,
            answers_per_mac_burst: 16,
        }
    }
}

impl Pxe {
    /// Whether `other` needs other sockets (bound at start only).
    pub fn sockets_differ(&self, other: &Pxe) -> bool {
        (self.enabled, self.listen, &self.interface, self.proxy_port, self.pxe_port)
            != (other.enabled, other.listen, &other.interface, other.proxy_port, other.pxe_port)
    }

    /// Checks the section; Err((key, value, why)).
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        if self.proxy_port == 0 {
            return Err(("pxe.proxy_port", "0".into(), "port 0 is not a usable port; DHCP clients send to 67"));
        }
        if self.client_port == 0 {
            return Err(("pxe.client_port", "0".into(), "port 0 is not a usable port; DHCP clients listen on 68"));
        }
        if self.pxe_port == self.proxy_port {
            return Err(("pxe.pxe_port", self.pxe_port.to_string(), "is the same port as pxe.proxy_port (use 4011, or 0 for none)"));
        }
        if self.interface.len() > 15 || self.interface.bytes().any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0) {
            return Err((
                "pxe.interface",
                format!("{:?}", self.interface),
                "is not an interface name (at most 15 bytes, no '/' or spaces)",
            ));
        }
        for (k, v) in [
            ("pxe.bios_boot_file", &self.bios_boot_file),
            ("pxe.uefi_boot_file", &self.uefi_boot_file),
            ("pxe.http_boot_file", &self.http_boot_file),
        ] {
            // The DHCP file field holds 127 bytes; the name also goes into a URL, so no spaces,
            // '?', '#', '%' or '..' either.
            let ok = !v.is_empty()
                && v.len() <= 100
                && !v.starts_with('/')
                && !v.split('/').any(|p| p == ".." || p.is_empty())
                && v.bytes().all(|b| b.is_ascii_graphic() && !b"?#%\\\"".contains(&b));
            if !ok {
                return Err((
                    k,
                    format!("{v:?}"),
                    "must be a relative path under tftp.root: 1-100 printable ASCII bytes, no '..', '?', '#', '%', '\\' or spaces",
                ));
            }
        }
        if self.answers_per_mac_per_s == 0 {
            return Err(("pxe.answers_per_mac_per_s", "0".into(), "0 would refuse every client; give at least 1"));
        }
        if self.answers_per_mac_burst == 0 {
            return Err(("pxe.answers_per_mac_burst", "0".into(), "0 would refuse every client; give at least 1"));
        }
        Ok(())
    }
}
