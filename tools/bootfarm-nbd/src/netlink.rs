//! The kernel NBD driver's generic-netlink interface (linux/nbd-netlink.h): resolve the "nbd"
//! family and its multicast group, NBD_CMD_CONNECT a device with its sockets, a dead-connection
//! timeout and a request timeout, NBD_CMD_RECONFIGURE a dead connection with a new socket, and
//! read the NBD_CMD_LINK_DEAD events. Messages are built and parsed here by hand (no libnl);
//! a receive is at most `RECV_MAX` bytes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 0x8000;
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;

pub const NBD_CMD_CONNECT: u8 = 1;
pub const NBD_CMD_RECONFIGURE: u8 = 3;
pub const NBD_CMD_LINK_DEAD: u8 = 4;
pub const NBD_ATTR_INDEX: u16 = 1;
pub const NBD_ATTR_SIZE_BYTES: u16 = 2;
pub const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
pub const NBD_ATTR_TIMEOUT: u16 = 4;
pub const NBD_ATTR_SERVER_FLAGS: u16 = 5;
pub const NBD_ATTR_SOCKETS: u16 = 7;
pub const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

/// One receive: the kernel's messages here are a few hundred bytes.
const RECV_MAX: usize = 16 << 10;

/// Attributes of a generic-netlink message, built in place.
#[derive(Default)]
pub struct Attrs(pub Vec<u8>);

impl Attrs {
    fn put(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(payload);
        while self.0.len() & 3 != 0 {
            self.0.push(0);
        }
        self
    }
    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }
    pub fn u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }
    fn nest(&mut self, ty: u16, inner: &Attrs) -> &mut Self {
        self.put(ty | NLA_F_NESTED, &inner.0)
    }
    /// NBD_ATTR_SOCKETS with one socket.
    pub fn socket(&mut self, fd: RawFd) -> &mut Self {
        let mut item = Attrs::default();
        item.u32(NBD_SOCK_FD, fd as u32);
        let mut socks = Attrs::default();
        socks.nest(NBD_SOCK_ITEM, &item);
        self.nest(NBD_ATTR_SOCKETS, &socks)
    }
}

/// The (type, payload) attributes in `b`; a malformed length ends the walk.
pub fn parse_attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// A generic-netlink socket.
pub struct Genl {
    fd: OwnedFd,
    seq: u32,
}

/// One message read: its netlink type, its generic-netlink command and attribute bytes, or
/// the error code of an NLMSG_ERROR (0: an acknowledgement).
pub enum Msg {
    Genl { ty: u16, cmd: u8, seq: u32, attrs: Vec<u8> },
    Ack { seq: u32, error: i32 },
}

impl Genl {
    /// A new socket; `inheritable` leaves it open across exec (the watcher takes it over).
    pub fn open(inheritable: bool) -> Result<Genl, String> {
        let flags = libc::SOCK_RAW | if inheritable { 0 } else { libc::SOCK_CLOEXEC };
        // Safety: plain socket/bind calls on a descriptor owned right after.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, flags, libc::NETLINK_GENERIC) };
        if fd < 0 {
            return Err(format!("netlink socket: {}", std::io::Error::last_os_error()));
        }
        // Safety: fd was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        let rc = unsafe { libc::bind(fd.as_raw_fd(), &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as u32) };
        if rc != 0 {
            return Err(format!("netlink bind: {}", std::io::Error::last_os_error()));
        }
        Ok(Genl { fd, seq: 1 })
    }

    /// Takes over an inherited socket (the watcher).
    pub fn from_fd(fd: RawFd) -> Genl {
        // Safety: the parent passed this descriptor on purpose; nothing else in this process owns it.
        Genl { fd: unsafe { OwnedFd::from_raw_fd(fd) }, seq: 1 }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn send(&mut self, ty: u16, flags: u16, cmd: u8, attrs: &Attrs) -> Result<u32, String> {
        self.seq += 1;
        let len = 16 + 4 + attrs.0.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[cmd, 1, 0, 0]); // genlmsghdr: cmd, version 1
        m.extend_from_slice(&attrs.0);
        // Safety: m is a valid buffer of m.len() bytes for the duration of the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if n != m.len() as isize {
            return Err(format!("netlink send: {}", std::io::Error::last_os_error()));
        }
        Ok(self.seq)
    }

    /// The messages of one receive (blocking).
    pub fn recv(&mut self) -> Result<Vec<Msg>, String> {
        let mut buf = vec![0u8; RECV_MAX];
        // Safety: buf is writable for buf.len() bytes.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(format!("netlink receive: {}", std::io::Error::last_os_error()));
        }
        let mut b = &buf[..n as usize];
        let mut out = Vec::new();
        while b.len() >= 16 {
            let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            let seq = u32::from_ne_bytes(b[8..12].try_into().unwrap());
            if len < 16 || len > b.len() {
                break;
            }
            if ty == NLMSG_ERROR && len >= 20 {
                out.push(Msg::Ack { seq, error: i32::from_ne_bytes(b[16..20].try_into().unwrap()) });
            } else if len >= 20 {
                out.push(Msg::Genl { ty, cmd: b[16], seq, attrs: b[20..len].to_vec() });
            }
            b = &b[((len + 3) & !3).min(b.len())..];
        }
        Ok(out)
    }

    /// Sends a request and waits for its acknowledgement; returns the replies that came first.
    pub fn request(&mut self, family: u16, cmd: u8, attrs: &Attrs) -> Result<Vec<Vec<u8>>, String> {
        let seq = self.send(family, NLM_F_ACK, cmd, attrs)?;
        let mut replies = Vec::new();
        for _ in 0..64 {
            for m in self.recv()? {
                match m {
                    Msg::Ack { seq: s, error } if s == seq => {
                        return if error == 0 { Ok(replies) } else { Err(std::io::Error::from_raw_os_error(-error).to_string()) };
                    }
                    Msg::Genl { seq: s, attrs, .. } if s == seq => replies.push(attrs),
                    _ => {}
                }
            }
        }
        Err("netlink: no acknowledgement".into())
    }

    /// The "nbd" family's id and the id of its multicast group (link-dead events).
    pub fn resolve_nbd(&mut self) -> Result<(u16, u32), String> {
        let mut a = Attrs::default();
        a.put(CTRL_ATTR_FAMILY_NAME, b"nbd\0");
        let replies = self
            .request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &a)
            .map_err(|e| format!("the kernel has no nbd netlink family ({e}): load the nbd module"))?;
        let (mut family, mut group) = (None, None);
        for r in &replies {
            for (ty, p) in parse_attrs(r) {
                match ty {
                    CTRL_ATTR_FAMILY_ID if p.len() >= 2 => family = Some(u16::from_ne_bytes([p[0], p[1]])),
                    CTRL_ATTR_MCAST_GROUPS => {
                        for (_, g) in parse_attrs(p) {
                            let g = parse_attrs(g);
                            let named = g.iter().any(|(t, v)| *t == CTRL_ATTR_MCAST_GRP_NAME && v.starts_with(b"nbd_mc_group"));
                            let id = g.iter().find(|(t, v)| *t == CTRL_ATTR_MCAST_GRP_ID && v.len() >= 4);
                            if let (true, Some((_, v))) = (named, id) {
                                group = Some(u32::from_ne_bytes(v[..4].try_into().unwrap()));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        match (family, group) {
            (Some(f), Some(g)) => Ok((f, g)),
            _ => Err("the nbd netlink family has no id or no multicast group".into()),
        }
    }

    /// Subscribes to a multicast group (before the device is connected: no event is missed).
    pub fn join(&self, group: u32) -> Result<(), String> {
        // Safety: setsockopt with a pointer to a u32 and its size.
        let rc = unsafe { libc::setsockopt(self.fd.as_raw_fd(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, (&group as *const u32).cast(), 4) };
        if rc != 0 {
            return Err(format!("netlink join group {group}: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_nested_and_parsed_back() {
        let mut a = Attrs::default();
        a.u32(NBD_ATTR_INDEX, 3).u64(NBD_ATTR_SIZE_BYTES, 1 << 30).socket(7);
        let p = parse_attrs(&a.0);
        assert_eq!(p[0], (NBD_ATTR_INDEX, &3u32.to_ne_bytes()[..]));
        assert_eq!(p[1], (NBD_ATTR_SIZE_BYTES, &(1u64 << 30).to_ne_bytes()[..]));
        assert_eq!(p[2].0, NBD_ATTR_SOCKETS);
        let item = parse_attrs(p[2].1);
        assert_eq!(item[0].0, NBD_SOCK_ITEM);
        assert_eq!(parse_attrs(item[0].1), vec![(NBD_SOCK_FD, &7u32.to_ne_bytes()[..])]);
        assert_eq!(a.0.len() & 3, 0);
        // A length past the end stops the walk instead of reading beyond it.
        assert!(parse_attrs(&[200, 0, 1, 0, 0, 0]).is_empty());
    }
}
