//! BOOTP/DHCP messages (RFC 2131/2132, PXE options of RFC 4578 and PXE 2.1) in smoltcp's shape:
//! [`Packet`] is a zero-copy view over a buffer with the fixed fields at known ranges, [`Repr`] the
//! typed message that [`Repr::parse`]s from a view and [`Repr::emit`]s into one. Byte-valued
//! options borrow from the buffer. Limits: a message is at most [`PACKET_MAX`] bytes, an option at
//! most 255 bytes (the format's own bound), Ethernet hardware addresses only; overloaded
//! sname/file (option 52) are read, never written. A repeated option keeps its first instance
//! (RFC 3396 concatenation is not needed by any PXE client and is not read).

use std::net::Ipv4Addr;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// PXE boot-server discovery port (PXE 2.1 §2.2.3): UEFI firmware asks the proxy here.
pub const PXE_PORT: u16 = 4011;
pub const MAGIC_COOKIE: [u8; 4] = [0x63, 0x82, 0x53, 0x63];
/// Fixed BOOTP header (236 bytes) plus the magic cookie.
pub const HEADER_LEN: usize = 240;
/// Largest message read or written: one Ethernet frame's UDP payload (1500 - 20 - 8) is what
/// every PXE ROM sends; anything larger is not a boot client and is dropped as malformed.
pub const PACKET_MAX: usize = 1472;
/// BOOTP's minimum message (RFC 1542 §2.1): some ROMs drop shorter replies, so emit pads to it.
pub const PACKET_MIN: usize = 300;
/// Longest option value the format can carry.
pub const OPTION_MAX: usize = 255;
/// Longest client UUID/GUID (option 97) echoed: type byte plus 16 bytes (RFC 4578 §2.3).
pub const UUID_MAX: usize = 17;

/// Field ranges of the fixed header.
mod field {
    use std::ops::Range;
    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const HOPS: usize = 3;
    pub const XID: Range<usize> = 4..8;
    pub const SECS: Range<usize> = 8..10;
    pub const FLAGS: Range<usize> = 10..12;
    pub const CIADDR: Range<usize> = 12..16;
    pub const YIADDR: Range<usize> = 16..20;
    pub const SIADDR: Range<usize> = 20..24;
    pub const GIADDR: Range<usize> = 24..28;
    pub const CHADDR: Range<usize> = 28..44;
    pub const SNAME: Range<usize> = 44..108;
    pub const FILE: Range<usize> = 108..236;
    pub const COOKIE: Range<usize> = 236..240;
    pub const OPTIONS: usize = 240;
}

/// Option codes read or written here.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const REQUESTED_IP: u8 = 50;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const TFTP_SERVER: u8 = 66;
    pub const BOOTFILE: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    pub const RELAY_AGENT: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    pub const IPXE_ENCAP: u8 = 175;
    pub const END: u8 = 255;
}

/// PXE vendor sub-options inside option 43 (PXE 2.1 Table 2-1).
/// iPXE's feature sub-options inside option 175 (iPXE include/ipxe/dhcp.h).
pub mod ipxe_feature {
    pub const HTTP: u8 = 0x13;
}

pub mod pxe_sub {
    pub const DISCOVERY_CONTROL: u8 = 6;
    pub const BOOT_ITEM: u8 = 71;
    /// Discovery control bit 3: "download the boot file in the offer's file field, skip the boot
    /// server discovery" — what makes BIOS ROMs boot straight from a proxy offer.
    pub const USE_BOOT_FILE: u8 = 0x08;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Request = 1,
    Reply = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<MessageType> {
        use MessageType::*;
        Some(match v {
            1 => Discover,
            2 => Offer,
            3 => Request,
            4 => Decline,
            5 => Ack,
            6 => Nak,
            7 => Release,
            8 => Inform,
            _ => return None,
        })
    }
}

/// Why a message was not read; each maps to one counter in the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the header and cookie.
    TooShort,
    /// Longer than [`PACKET_MAX`].
    TooLong,
    /// Not a DHCP message (BOOTP without the magic cookie).
    BadCookie,
    /// op is neither BOOTREQUEST nor BOOTREPLY.
    BadOp,
    /// Hardware type/length other than Ethernet's (1, 6).
    BadHardware,
    /// An option's length runs past the end of its area, or a fixed-size option has the wrong size.
    BadOptionLength(u8),
    /// Option 53 missing or not 1-8.
    BadMessageType,
    /// Option 52 with a value other than 1, 2, 3.
    BadOverload,
}

impl Malformed {
    pub fn message(self) -> &'static str {
        match self {
            Malformed::TooShort => "shorter than the 240-byte BOOTP header and magic cookie",
            Malformed::TooLong => "longer than one frame (1472 bytes)",
            Malformed::BadCookie => "no DHCP magic cookie (plain BOOTP is not served)",
            Malformed::BadOp => "op is neither BOOTREQUEST nor BOOTREPLY",
            Malformed::BadHardware => "hardware type/length is not Ethernet (1/6)",
            Malformed::BadOptionLength(_) => "an option length runs past its area or has the wrong size",
            Malformed::BadMessageType => "option 53 (message type) missing or unknown",
            Malformed::BadOverload => "option 52 (overload) is not 1, 2 or 3",
        }
    }
}

/// Emit failures: the caller built a message that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitError {
    /// The buffer is shorter than [`Repr::buffer_len`].
    BufferTooShort,
    /// An option value is longer than 255 bytes, or sname/file longer than their fields.
    ValueTooLong(u8),
}

/// A zero-copy view of a BOOTP/DHCP message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view after [`Packet::check_len`]: every fixed-field getter is then in bounds.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Malformed> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<(), Malformed> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(Malformed::TooShort)
        } else if len > PACKET_MAX {
            Err(Malformed::TooLong)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    fn ip(&self, r: std::ops::Range<usize>) -> Ipv4Addr {
        let b = &self.b()[r];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn op(&self) -> u8 {
        self.b()[field::OP]
    }
    pub fn htype(&self) -> u8 {
        self.b()[field::HTYPE]
    }
    pub fn hlen(&self) -> u8 {
        self.b()[field::HLEN]
    }
    pub fn hops(&self) -> u8 {
        self.b()[field::HOPS]
    }
    pub fn xid(&self) -> u32 {
        u32::from_be_bytes(self.b()[field::XID].try_into().unwrap())
    }
    pub fn secs(&self) -> u16 {
        u16::from_be_bytes(self.b()[field::SECS].try_into().unwrap())
    }
    pub fn flags(&self) -> u16 {
        u16::from_be_bytes(self.b()[field::FLAGS].try_into().unwrap())
    }
    /// The broadcast flag (RFC 2131 §2): the client cannot receive unicast before it has an address.
    pub fn broadcast(&self) -> bool {
        self.flags() & 0x8000 != 0
    }
    pub fn ciaddr(&self) -> Ipv4Addr {
        self.ip(field::CIADDR)
    }
    pub fn yiaddr(&self) -> Ipv4Addr {
        self.ip(field::YIADDR)
    }
    pub fn siaddr(&self) -> Ipv4Addr {
        self.ip(field::SIADDR)
    }
    pub fn giaddr(&self) -> Ipv4Addr {
        self.ip(field::GIADDR)
    }
    /// The first six bytes of chaddr (Ethernet; `check` refuses other hardware).
    pub fn chaddr(&self) -> [u8; 6] {
        self.b()[field::CHADDR][..6].try_into().unwrap()
    }
    /// sname up to its first NUL.
    pub fn sname(&self) -> &[u8] {
        until_nul(&self.b()[field::SNAME])
    }
    /// file up to its first NUL.
    pub fn file(&self) -> &[u8] {
        until_nul(&self.b()[field::FILE])
    }
    pub fn has_cookie(&self) -> bool {
        self.b()[field::COOKIE] == MAGIC_COOKIE
    }
    /// The options area after the cookie.
    pub fn options_area(&self) -> &[u8] {
        &self.b()[field::OPTIONS..]
    }

    /// Options in wire order, the overloaded file and sname areas included (file first, RFC 2131
    /// §4.1). Yields an error once and stops when an option runs past its area.
    pub fn options(&self) -> Options<'_> {
        options_of(self.b())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_op(&mut self, v: Op) {
        self.bm()[field::OP] = v as u8;
    }
    pub fn set_hardware_ethernet(&mut self) {
        self.bm()[field::HTYPE] = 1;
        self.bm()[field::HLEN] = 6;
    }
    pub fn set_hops(&mut self, v: u8) {
        self.bm()[field::HOPS] = v;
    }
    pub fn set_xid(&mut self, v: u32) {
        self.bm()[field::XID].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_secs(&mut self, v: u16) {
        self.bm()[field::SECS].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_flags(&mut self, v: u16) {
        self.bm()[field::FLAGS].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_ciaddr(&mut self, v: Ipv4Addr) {
        self.bm()[field::CIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_yiaddr(&mut self, v: Ipv4Addr) {
        self.bm()[field::YIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_siaddr(&mut self, v: Ipv4Addr) {
        self.bm()[field::SIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_giaddr(&mut self, v: Ipv4Addr) {
        self.bm()[field::GIADDR].copy_from_slice(&v.octets());
    }
    pub fn set_chaddr(&mut self, v: [u8; 6]) {
        let f = &mut self.bm()[field::CHADDR];
        f.fill(0);
        f[..6].copy_from_slice(&v);
    }
    /// Writes `v` NUL-padded; `v` must fit with room for the NUL.
    fn set_str(&mut self, r: std::ops::Range<usize>, v: &[u8]) {
        let f = &mut self.bm()[r];
        f.fill(0);
        f[..v.len()].copy_from_slice(v);
    }
    pub fn set_cookie(&mut self) {
        self.bm()[field::COOKIE].copy_from_slice(&MAGIC_COOKIE);
    }
}

fn until_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

/// Iterator over (code, value) of the option areas; pads skipped, stops at END of each area.
pub struct Options<'a> {
    areas: [&'a [u8]; 3],
    area: usize,
    pos: usize,
    failed: bool,
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<(u8, &'a [u8]), Malformed>;
    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed && self.area < self.areas.len() {
            let a = self.areas[self.area];
            let Some(&code) = a.get(self.pos) else {
                self.area += 1;
                self.pos = 0;
                continue;
            };
            match code {
                opt::PAD => self.pos += 1,
                opt::END => self.pos = a.len(),
                _ => {
                    let Some(&len) = a.get(self.pos + 1) else {
                        self.failed = true;
                        return Some(Err(Malformed::BadOptionLength(code)));
                    };
                    let start = self.pos + 2;
                    let end = start + len as usize;
                    if end > a.len() {
                        self.failed = true;
                        return Some(Err(Malformed::BadOptionLength(code)));
                    }
                    self.pos = end;
                    return Some(Ok((code, &a[start..end])));
                }
            }
        }
        None
    }
}

/// The options encapsulated in an option's value (43's PXE sub-options, 175's iPXE features).
pub fn encapsulated(v: &[u8]) -> Options<'_> {
    Options { areas: [v, &[], &[]], area: 0, pos: 0, failed: false }
}

/// PXE vendor options (option 43's sub-options) read or written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PxeVendor {
    /// Sub-option 6, PXE_DISCOVERY_CONTROL.
    pub discovery_control: Option<u8>,
    /// Sub-option 71, PXE_BOOT_ITEM: (server type, layer).
    pub boot_item: Option<(u16, u16)>,
}

impl PxeVendor {
    /// Longest encoding: 6 (3 bytes) + 71 (6 bytes) + END.
    pub const BUFFER_LEN: usize = 10;

    pub fn parse(v: &[u8]) -> Result<PxeVendor, Malformed> {
        let mut out = PxeVendor::default();
        for o in encapsulated(v) {
            let (code, val) = o.map_err(|_| Malformed::BadOptionLength(opt::VENDOR_SPECIFIC))?;
            match code {
                pxe_sub::DISCOVERY_CONTROL if out.discovery_control.is_none() => {
                    let &[c] = val else { return Err(Malformed::BadOptionLength(opt::VENDOR_SPECIFIC)) };
                    out.discovery_control = Some(c);
                }
                pxe_sub::BOOT_ITEM if out.boot_item.is_none() => {
                    let &[a, b, c, d] = val else { return Err(Malformed::BadOptionLength(opt::VENDOR_SPECIFIC)) };
                    out.boot_item = Some((u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Encodes into `out`; returns the length (0 when nothing is set: then omit option 43).
    pub fn emit(&self, out: &mut [u8; Self::BUFFER_LEN]) -> usize {
        let mut n = 0;
        if let Some(c) = self.discovery_control {
            out[..3].copy_from_slice(&[pxe_sub::DISCOVERY_CONTROL, 1, c]);
            n = 3;
        }
        if let Some((t, l)) = self.boot_item {
            let (t, l) = (t.to_be_bytes(), l.to_be_bytes());
            out[n..n + 6].copy_from_slice(&[pxe_sub::BOOT_ITEM, 4, t[0], t[1], l[0], l[1]]);
            n += 6;
        }
        if n > 0 {
            out[n] = opt::END;
            n += 1;
        }
        n
    }
}

/// A DHCP message as types. Byte fields borrow from the parsed buffer (or, to emit, from
/// whatever the caller holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repr<'a> {
    pub op: Op,
    pub message_type: MessageType,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    /// sname field (empty when overloaded with options); at most 64 bytes (a full field has no NUL).
    pub sname: &'a [u8],
    /// file field (empty when overloaded with options); at most 128 bytes (a full field has no NUL).
    pub file: &'a [u8],
    /// 50
    pub requested_ip: Option<Ipv4Addr>,
    /// 54
    pub server_id: Option<Ipv4Addr>,
    /// 55, as sent
    pub parameter_request_list: Option<&'a [u8]>,
    /// 57
    pub max_message_size: Option<u16>,
    /// 60
    pub vendor_class: Option<&'a [u8]>,
    /// 43, raw (read PXE sub-options with [`PxeVendor::parse`])
    pub vendor_specific: Option<&'a [u8]>,
    /// 61
    pub client_id: Option<&'a [u8]>,
    /// 66
    pub tftp_server: Option<&'a [u8]>,
    /// 67
    pub bootfile: Option<&'a [u8]>,
    /// 77, raw: iPXE sends the bare string `iPXE`, RFC 3004 clients length-prefixed entries.
    pub user_class: Option<&'a [u8]>,
    /// 93: the first architecture of the list (clients send one).
    pub client_arch: Option<u16>,
    /// 94: (type, major, minor)
    pub client_ndi: Option<[u8; 3]>,
    /// 97, raw (type byte + GUID; at most [`UUID_MAX`] bytes).
    pub client_uuid: Option<&'a [u8]>,
    /// 175, raw (iPXE's encapsulated feature options): its presence marks iPXE.
    pub ipxe_encap: Option<&'a [u8]>,
    /// 82, raw: echoed to the relay, written last.
    pub relay_agent: Option<&'a [u8]>,
}

impl<'a> Repr<'a> {
    /// A message with every optional part absent.
    pub fn new(op: Op, message_type: MessageType, xid: u32, chaddr: [u8; 6]) -> Repr<'a> {
        let z = Ipv4Addr::UNSPECIFIED;
        Repr {
            op,
            message_type,
            hops: 0,
            xid,
            secs: 0,
            broadcast: false,
            ciaddr: z,
            yiaddr: z,
            siaddr: z,
            giaddr: z,
            chaddr,
            sname: &[],
            file: &[],
            requested_ip: None,
            server_id: None,
            parameter_request_list: None,
            max_message_size: None,
            vendor_class: None,
            vendor_specific: None,
            client_id: None,
            tftp_server: None,
            bootfile: None,
            user_class: None,
            client_arch: None,
            client_ndi: None,
            client_uuid: None,
            ipxe_encap: None,
            relay_agent: None,
        }
    }

    /// Reads a checked view. Unknown options are skipped; fixed-size ones are checked.
    pub fn parse(p: &Packet<&'a [u8]>) -> Result<Repr<'a>, Malformed> {
        p.check_len()?;
        let op = match p.op() {
            1 => Op::Request,
            2 => Op::Reply,
            _ => return Err(Malformed::BadOp),
        };
        if p.htype() != 1 || p.hlen() != 6 {
            return Err(Malformed::BadHardware);
        }
        if !p.has_cookie() {
            return Err(Malformed::BadCookie);
        }
        let b: &'a [u8] = p.buffer;
        let view = Packet::new_unchecked(b);
        let mut r = Repr::new(op, MessageType::Discover, view.xid(), view.chaddr());
        r.hops = view.hops();
        r.secs = view.secs();
        r.broadcast = view.broadcast();
        r.ciaddr = view.ciaddr();
        r.yiaddr = view.yiaddr();
        r.siaddr = view.siaddr();
        r.giaddr = view.giaddr();
        let mut message_type = None;
        let mut overload = 0u8;
        let ip = |code, v: &[u8]| -> Result<Ipv4Addr, Malformed> {
            let &[a, b, c, d] = v else { return Err(Malformed::BadOptionLength(code)) };
            Ok(Ipv4Addr::new(a, b, c, d))
        };
        for o in options_of(b) {
            let (code, v) = o?;
            match code {
                opt::MESSAGE_TYPE if message_type.is_none() => {
                    let &[t] = v else { return Err(Malformed::BadOptionLength(code)) };
                    message_type = Some(MessageType::from_u8(t).ok_or(Malformed::BadMessageType)?);
                }
                opt::OVERLOAD => {
                    let &[o] = v else { return Err(Malformed::BadOptionLength(code)) };
                    if !(1..=3).contains(&o) {
                        return Err(Malformed::BadOverload);
                    }
                    overload = o;
                }
                opt::REQUESTED_IP if r.requested_ip.is_none() => r.requested_ip = Some(ip(code, v)?),
                opt::SERVER_ID if r.server_id.is_none() => r.server_id = Some(ip(code, v)?),
                opt::MAX_MESSAGE_SIZE if r.max_message_size.is_none() => {
                    let &[a, b] = v else { return Err(Malformed::BadOptionLength(code)) };
                    r.max_message_size = Some(u16::from_be_bytes([a, b]));
                }
                opt::CLIENT_ARCH if r.client_arch.is_none() => {
                    if v.len() < 2 || v.len() % 2 != 0 {
                        return Err(Malformed::BadOptionLength(code));
                    }
                    r.client_arch = Some(u16::from_be_bytes([v[0], v[1]]));
                }
                opt::CLIENT_NDI if r.client_ndi.is_none() => {
                    let &[a, b, c] = v else { return Err(Malformed::BadOptionLength(code)) };
                    r.client_ndi = Some([a, b, c]);
                }
                opt::CLIENT_UUID if r.client_uuid.is_none() => {
                    if v.is_empty() || v.len() > UUID_MAX {
                        return Err(Malformed::BadOptionLength(code));
                    }
                    r.client_uuid = Some(v);
                }
                opt::PARAMETER_REQUEST_LIST => set_first(&mut r.parameter_request_list, v),
                opt::VENDOR_CLASS => set_first(&mut r.vendor_class, v),
                opt::VENDOR_SPECIFIC => set_first(&mut r.vendor_specific, v),
                opt::CLIENT_ID => set_first(&mut r.client_id, v),
                opt::TFTP_SERVER => set_first(&mut r.tftp_server, v),
                opt::BOOTFILE => set_first(&mut r.bootfile, v),
                opt::USER_CLASS => set_first(&mut r.user_class, v),
                opt::IPXE_ENCAP => set_first(&mut r.ipxe_encap, v),
                opt::RELAY_AGENT => set_first(&mut r.relay_agent, v),
                _ => {}
            }
        }
        r.message_type = message_type.ok_or(Malformed::BadMessageType)?;
        r.file = if overload & 1 != 0 { &[] } else { until_nul(&b[field::FILE]) };
        r.sname = if overload & 2 != 0 { &[] } else { until_nul(&b[field::SNAME]) };
        Ok(r)
    }

    /// Whether option 77 names `class`, as iPXE's bare string or as an RFC 3004 entry.
    pub fn has_user_class(&self, class: &[u8]) -> bool {
        let Some(u) = self.user_class else { return false };
        if u == class {
            return true;
        }
        let mut rest = u;
        while let Some((&len, tail)) = rest.split_first() {
            let Some(entry) = tail.get(..len as usize) else { return false };
            if entry == class {
                return true;
            }
            rest = &tail[len as usize..];
        }
        false
    }

    /// Whether option 175 lists iPXE feature `code` (e.g. 0x13: HTTP); false without 175.
    pub fn has_ipxe_feature(&self, code: u8) -> bool {
        self.ipxe_encap.is_some_and(|v| encapsulated(v).any(|o| matches!(o, Ok((c, _)) if c == code)))
    }

    /// Options in emit order: 53 first (RFC 2131 §4.1 asks nothing, but some ROMs look only
    /// there), 82 last (RFC 3046 §2.1: the relay strips it from the end).
    fn each_option(&self, mut f: impl FnMut(u8, &[u8]) -> Result<(), EmitError>) -> Result<(), EmitError> {
        f(opt::MESSAGE_TYPE, &[self.message_type as u8])?;
        if let Some(ip) = self.server_id {
            f(opt::SERVER_ID, &ip.octets())?;
        }
        if let Some(ip) = self.requested_ip {
            f(opt::REQUESTED_IP, &ip.octets())?;
        }
        if let Some(s) = self.max_message_size {
            f(opt::MAX_MESSAGE_SIZE, &s.to_be_bytes())?;
        }
        if let Some(v) = self.parameter_request_list {
            f(opt::PARAMETER_REQUEST_LIST, v)?;
        }
        if let Some(v) = self.client_id {
            f(opt::CLIENT_ID, v)?;
        }
        if let Some(v) = self.vendor_class {
            f(opt::VENDOR_CLASS, v)?;
        }
        if let Some(a) = self.client_arch {
            f(opt::CLIENT_ARCH, &a.to_be_bytes())?;
        }
        if let Some(n) = self.client_ndi {
            f(opt::CLIENT_NDI, &n)?;
        }
        if let Some(v) = self.client_uuid {
            f(opt::CLIENT_UUID, v)?;
        }
        if let Some(v) = self.user_class {
            f(opt::USER_CLASS, v)?;
        }
        if let Some(v) = self.ipxe_encap {
            f(opt::IPXE_ENCAP, v)?;
        }
        if let Some(v) = self.vendor_specific {
            f(opt::VENDOR_SPECIFIC, v)?;
        }
        if let Some(v) = self.tftp_server {
            f(opt::TFTP_SERVER, v)?;
        }
        if let Some(v) = self.bootfile {
            f(opt::BOOTFILE, v)?;
        }
        if let Some(v) = self.relay_agent {
            f(opt::RELAY_AGENT, v)?;
        }
        Ok(())
    }

    /// Bytes [`Repr::emit`] writes: header, options, END, padded to [`PACKET_MIN`].
    pub fn buffer_len(&self) -> usize {
        let mut n = HEADER_LEN;
        let _ = self.each_option(|_, v| {
            n += 2 + v.len();
            Ok(())
        });
        (n + 1).max(PACKET_MIN)
    }

    /// Writes the message into the front of `buf`; returns the length written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        if self.sname.len() > field::SNAME.len() || self.sname.contains(&0) {
            return Err(EmitError::ValueTooLong(0));
        }
        if self.file.len() > field::FILE.len() || self.file.contains(&0) {
            return Err(EmitError::ValueTooLong(0));
        }
        self.each_option(|code, v| if v.len() > OPTION_MAX { Err(EmitError::ValueTooLong(code)) } else { Ok(()) })?;
        let len = self.buffer_len();
        if buf.len() < len {
            return Err(EmitError::BufferTooShort);
        }
        let buf = &mut buf[..len];
        buf.fill(0);
        let mut p = Packet::new_unchecked(&mut *buf);
        p.set_op(self.op);
        p.set_hardware_ethernet();
        p.set_hops(self.hops);
        p.set_xid(self.xid);
        p.set_secs(self.secs);
        p.set_flags(if self.broadcast { 0x8000 } else { 0 });
        p.set_ciaddr(self.ciaddr);
        p.set_yiaddr(self.yiaddr);
        p.set_siaddr(self.siaddr);
        p.set_giaddr(self.giaddr);
        p.set_chaddr(self.chaddr);
        p.set_str(field::SNAME, self.sname);
        p.set_str(field::FILE, self.file);
        p.set_cookie();
        let mut pos = field::OPTIONS;
        self.each_option(|code, v| {
            buf[pos] = code;
            buf[pos + 1] = v.len() as u8;
            buf[pos + 2..pos + 2 + v.len()].copy_from_slice(v);
            pos += 2 + v.len();
            Ok(())
        })?;
        buf[pos] = opt::END;
        Ok(len)
    }
}

fn set_first<'a>(slot: &mut Option<&'a [u8]>, v: &'a [u8]) {
    if slot.is_none() {
        *slot = Some(v);
    }
}

/// The options of a message whose length was checked (at least [`HEADER_LEN`]).
fn options_of(b: &[u8]) -> Options<'_> {
    let main = &b[field::OPTIONS..];
    // Option 52 must be in the main area; find it first so the iterator knows the areas.
    let overload = (Options { areas: [main, &[], &[]], area: 0, pos: 0, failed: false })
        .flatten()
        .find(|o| o.0 == opt::OVERLOAD && o.1.len() == 1)
        .map_or(0, |o| o.1[0]);
    let file: &[u8] = if overload & 1 != 0 { &b[field::FILE] } else { &[] };
    let sname: &[u8] = if overload & 2 != 0 { &b[field::SNAME] } else { &[] };
    Options { areas: [main, file, sname], area: 0, pos: 0, failed: false }
}

/// Parses `bytes` as one message: the usual entry point.
pub fn parse(bytes: &[u8]) -> Result<Repr<'_>, Malformed> {
    Repr::parse(&Packet::new_checked(bytes)?)
}

#[cfg(test)]
#[path = "wire_tests.rs"]
pub(crate) mod tests;
