//! What a ring completion or a timer is about, packed into the 64 bits of an io_uring
//! user_data: the service it belongs to, the operation, the session or connection (slab id and
//! generation) and, for services with several sends in flight per session, the send slot.
//! Layout: service (4 bits) | op (4) | id (24) | generation (16) | slot (16).
//!
//! Limits: 16 services, 16 operations per service, ids below `ID_SPACE`. A slab refuses an
//! entry past `ID_SPACE` (see `slab.rs`); a configuration whose `*_max` would need more than
//! `ID_MAX` is refused when it is loaded (`config::build`), so that refusal never happens.

/// Which of a worker's services a token belongs to: the index into the worker's service list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ServiceId {
    Tftp = 0,
    Http = 1,
    Nbd = 2,
    /// ProxyDHCP (#19).
    Dhcp = 3,
    /// The iSCSI target (#16); absent when server.iscsi_port = 0.
    Iscsi = 4,
}

impl ServiceId {
    /// Services a worker may hold (the field's width).
    pub const MAX: usize = 16;
}

/// Ids the 24-bit field can hold.
pub const ID_SPACE: u32 = 1 << 24;

/// The most live sessions (or connections) a `*_max` may allow per service: half the id space,
/// the other half being headroom for entries closed but still held by the kernel (a receive
/// or a zero-copy send not yet completed), which keep their id until it lets go.
pub const ID_MAX: usize = (ID_SPACE / 2) as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// `ServiceId as u8`.
    pub service: u8,
    /// What the service asked the kernel to do (its own numbering, below 16).
    pub op: u8,
    pub id: u32,
    pub generation: u16,
    /// A send slot (TFTP's window sends); 0 where a service has one send per connection.
    pub slot: u16,
}

impl Token {
    pub fn new(service: ServiceId, op: u8, id: u32, generation: u16) -> Token {
        Token { service: service as u8, op, id, generation, slot: 0 }
    }

    /// A token for an operation with no session (a listener's accept or receive, a cancel).
    pub fn of_service(service: ServiceId, op: u8) -> Token {
        Token::new(service, op, 0, 0)
    }

    pub fn with_slot(mut self, slot: u16) -> Token {
        self.slot = slot;
        self
    }

    #[inline]
    pub fn pack(self) -> u64 {
        debug_assert!((self.service as usize) < ServiceId::MAX && self.op < 16 && self.id < ID_SPACE, "{self:?}");
        (self.service as u64 & 0xF)
            | (self.op as u64 & 0xF) << 4
            | (self.id as u64 & (ID_SPACE as u64 - 1)) << 8
            | (self.generation as u64) << 32
            | (self.slot as u64) << 48
    }

    #[inline]
    pub fn unpack(u: u64) -> Token {
        Token {
            service: (u & 0xF) as u8,
            op: ((u >> 4) & 0xF) as u8,
            id: ((u >> 8) & (ID_SPACE as u64 - 1)) as u32,
            generation: (u >> 32) as u16,
            slot: (u >> 48) as u16,
        }
    }
}

/// The configuration keys whose value bounds a service's slab, for the check at load time.
pub fn check_ids(limits: &[(&'static str, usize)]) -> Result<(), (&'static str, usize)> {
    match limits.iter().find(|(_, v)| *v > ID_MAX) {
        Some(&(k, v)) => Err((k, v)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_survives_packing_at_its_edges() {
        for (service, op, id, generation, slot) in
            [(0u8, 0u8, 0u32, 0u16, 0u16), (15, 15, ID_SPACE - 1, u16::MAX, u16::MAX), (3, 7, 1 << 23, 1, 63), (1, 1, 12345, 54321, 0)]
        {
            let t = Token { service, op, id, generation, slot };
            assert_eq!(Token::unpack(t.pack()), t);
        }
        // Neighbouring fields do not bleed into each other.
        let t = Token::new(ServiceId::Nbd, 3, ID_SPACE - 1, 0);
        assert_eq!(Token::unpack(t.pack()).generation, 0);
        assert_eq!(Token::unpack(t.pack()).service, ServiceId::Nbd as u8);
    }

    #[test]
    fn limits_past_the_id_width_are_named() {
        assert_eq!(check_ids(&[("a", 1), ("b", ID_MAX)]), Ok(()));
        assert_eq!(check_ids(&[("a", 1), ("b", ID_MAX + 1)]), Err(("b", ID_MAX + 1)));
    }
}
