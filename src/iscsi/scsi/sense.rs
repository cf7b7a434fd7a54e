//! SCSI sense data (SPC-4 4.5): what a CHECK CONDITION carries, in fixed format (0x70, 18
//! bytes: what initiators get unless they ask) or descriptor format (0x72, asked by REQUEST
//! SENSE with DESC=1). Constructors name the cases the target reports; nothing here allocates.

/// Sense keys (SPC-4 table 28).
pub mod key {
    pub const NO_SENSE: u8 = 0x00;
    pub const MEDIUM_ERROR: u8 = 0x03;
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    pub const UNIT_ATTENTION: u8 = 0x06;
    pub const DATA_PROTECT: u8 = 0x07;
    pub const MISCOMPARE: u8 = 0x0E;
}

/// Where in the CDB or parameter list the bad field is (the sense-key specific field pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// True: a CDB byte (C/D = 1); false: a byte of the parameter list (Data-Out).
    pub cdb: bool,
    pub byte: u16,
    /// The most significant bit of the field within the byte, when it is not the whole byte.
    pub bit: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field (the offset of a miscompare), when valid.
    pub info: Option<u64>,
    pub field: Option<Field>,
}

/// Length of fixed-format sense data as written by [`Sense::write`].
pub const FIXED_LEN: usize = 18;

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq, info: None, field: None }
    }
    /// NO SENSE, no additional information: what REQUEST SENSE reports when nothing is pending.
    pub const fn no_sense() -> Sense {
        Sense::new(key::NO_SENSE, 0, 0)
    }
    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE (20h/00h).
    pub const fn invalid_opcode() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00)
    }
    /// ILLEGAL REQUEST / INVALID FIELD IN CDB (24h/00h) pointing at `byte` (and `bit`, the
    /// field's most significant bit, when the field is narrower than the byte).
    pub const fn invalid_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense { field: Some(Field { cdb: true, byte, bit }), ..Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00) }
    }
    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST (26h/00h) pointing into the Data-Out.
    pub const fn invalid_param(byte: u16, bit: Option<u8>) -> Sense {
        Sense { field: Some(Field { cdb: false, byte, bit }), ..Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00) }
    }
    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR (1Ah/00h).
    pub const fn param_list_length() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x1A, 0x00)
    }
    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h).
    pub const fn lba_out_of_range() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00)
    }
    /// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED (25h/00h): any LUN but 0.
    pub const fn lun_not_supported() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00)
    }
    /// ILLEGAL REQUEST / SAVING PARAMETERS NOT SUPPORTED (39h/00h): MODE SENSE of saved values.
    pub const fn saving_not_supported() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00)
    }
    /// DATA PROTECT / WRITE PROTECTED (27h/00h): a write to a LUN without a write cache.
    pub const fn write_protected() -> Sense {
        Sense::new(key::DATA_PROTECT, 0x27, 0x00)
    }
    /// DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h): the write cache is at
    /// its limit (what a thin-provisioned LUN out of space reports; Linux and Windows fail the
    /// write without retrying it forever).
    pub const fn space_allocation_failed() -> Sense {
        Sense::new(key::DATA_PROTECT, 0x27, 0x07)
    }
    /// MEDIUM ERROR / UNRECOVERED READ ERROR (11h/00h): the image changed under the mapping or
    /// an overflow read failed.
    pub const fn read_error() -> Sense {
        Sense::new(key::MEDIUM_ERROR, 0x11, 0x00)
    }
    /// MEDIUM ERROR / WRITE ERROR (0Ch/00h): the private-mode version file could not be written.
    pub const fn write_error() -> Sense {
        Sense::new(key::MEDIUM_ERROR, 0x0C, 0x00)
    }
    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION (1Dh/00h); `offset` is the byte offset
    /// of the first difference in the Data-Out (SBC-3 5.25).
    pub const fn miscompare(offset: u64) -> Sense {
        Sense { info: Some(offset), ..Sense::new(key::MISCOMPARE, 0x1D, 0x00) }
    }
    /// UNIT ATTENTION / POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h): the first
    /// command of a new session after a target reset.
    pub const fn power_on_reset() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x29, 0x00)
    }
    /// UNIT ATTENTION / BUS DEVICE RESET FUNCTION OCCURRED (29h/03h): after a LUN RESET or a
    /// TARGET WARM RESET (SAM-5 names the LOGICAL UNIT RESET case 29h/03h too).
    pub const fn lun_reset() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x29, 0x03)
    }
    /// UNIT ATTENTION / COMMANDS CLEARED BY ANOTHER INITIATOR (2Fh/00h): this nexus's tasks
    /// were aborted by another's PREEMPT AND ABORT (SAM-5 5.6, TAS 0).
    pub const fn commands_cleared() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x2F, 0x00)
    }
    /// UNIT ATTENTION / RESERVATIONS PREEMPTED (2Ah/03h): another nexus's CLEAR removed every
    /// registration and the reservation (SPC-4 "Clearing").
    pub const fn reservations_preempted() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x2A, 0x03)
    }
    /// UNIT ATTENTION / RESERVATIONS RELEASED (2Ah/04h): a registrants-only or all-registrants
    /// reservation this nexus was registered under was released or changed type.
    pub const fn reservations_released() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x2A, 0x04)
    }
    /// UNIT ATTENTION / REGISTRATIONS PREEMPTED (2Ah/05h): another nexus's PREEMPT removed
    /// this nexus's registration (SPC-4 5.13.11.2.4).
    pub const fn registrations_preempted() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x2A, 0x05)
    }

    /// The sense-key specific bytes (SPC-4 4.5.2.4.2): SKSV, C/D, BPV, bit pointer, field pointer.
    fn specific(&self) -> [u8; 3] {
        match self.field {
            None => [0; 3],
            Some(f) => {
                let mut b = 0x80 | if f.cdb { 0x40 } else { 0 };
                if let Some(bit) = f.bit {
                    b |= 0x08 | (bit & 7);
                }
                let [hi, lo] = f.byte.to_be_bytes();
                [b, hi, lo]
            }
        }
    }

    /// Appends fixed-format sense data (response code 0x70, 18 bytes).
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut s = [0u8; FIXED_LEN];
        s[0] = 0x70;
        if let Some(info) = self.info {
            // Fixed format holds 4 bytes of information: VALID only when it fits.
            if let Ok(v) = u32::try_from(info) {
                s[0] |= 0x80;
                s[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        s[2] = self.key & 0x0F;
        s[7] = (FIXED_LEN - 8) as u8;
        s[12] = self.asc;
        s[13] = self.ascq;
        s[15..18].copy_from_slice(&self.specific());
        out.extend_from_slice(&s);
    }

    /// Appends descriptor-format sense data (response code 0x72): the header, then an
    /// information descriptor and a sense-key specific descriptor when they have content.
    pub fn write_descriptor(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0x72, self.key & 0x0F, self.asc, self.ascq, 0, 0, 0, 0]);
        if let Some(info) = self.info {
            out.extend_from_slice(&[0x00, 0x0A, 0x80, 0]);
            out.extend_from_slice(&info.to_be_bytes());
        }
        if self.field.is_some() {
            let s = self.specific();
            out.extend_from_slice(&[0x02, 0x06, 0, 0, s[0], s[1], s[2], 0]);
        }
        out[start + 7] = (out.len() - start - 8) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_invalid_field_points_at_byte_and_bit() {
        let mut v = Vec::new();
        Sense::invalid_field(1, Some(4)).write(&mut v);
        assert_eq!(v, [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xC8 | 4, 0, 1]);
        v.clear();
        Sense::invalid_param(17, None).write(&mut v);
        assert_eq!(&v[12..], &[0x26, 0, 0, 0x80, 0, 17]);
    }

    #[test]
    fn fixed_lba_out_of_range_and_unit_attentions() {
        let mut v = Vec::new();
        Sense::lba_out_of_range().write(&mut v);
        assert_eq!(v, [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0]);
        v.clear();
        Sense::power_on_reset().write(&mut v);
        assert_eq!((v[2], v[12], v[13]), (0x06, 0x29, 0x00));
        v.clear();
        Sense::lun_reset().write(&mut v);
        assert_eq!((v[2], v[12], v[13]), (0x06, 0x29, 0x03));
    }

    #[test]
    fn miscompare_carries_the_offset() {
        let mut v = Vec::new();
        Sense::miscompare(0x1234).write(&mut v);
        assert_eq!(&v[..7], &[0xF0, 0, 0x0E, 0, 0, 0x12, 0x34]);
        assert_eq!((v[12], v[13]), (0x1D, 0));
        // An offset that needs more than 4 bytes is not VALID in fixed format.
        v.clear();
        Sense::miscompare(1 << 33).write(&mut v);
        assert_eq!(v[0], 0x70);
        v.clear();
        Sense::miscompare(1 << 33).write_descriptor(&mut v);
        assert_eq!(v, [0x72, 0x0E, 0x1D, 0, 0, 0, 0, 12, 0, 0x0A, 0x80, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format() {
        let mut v = Vec::new();
        Sense::no_sense().write_descriptor(&mut v);
        assert_eq!(v, [0x72, 0, 0, 0, 0, 0, 0, 0]);
        v.clear();
        Sense::invalid_field(2, None).write_descriptor(&mut v);
        assert_eq!(v, [0x72, 5, 0x24, 0, 0, 0, 0, 8, 2, 6, 0, 0, 0xC0, 0, 2, 0]);
    }
}
