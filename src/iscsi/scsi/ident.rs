//! The LUN's identity (VPD page 0x83 NAA designator, also the unit serial number): unique per
//! vdisk, the same on every farm node that holds a byte-identical replica (so multipath and
//! failover see one disk), never empty (duplicate or empty ones have crashed Windows).
//!
//! NAA 6 (IEEE Registered Extended, SPC-4 7.8.6.6.5): 4 bits NAA, a 24-bit company id, 100
//! bits derived from the vdisk name, the newest image's own unique id (VHD footer unique id,
//! VHDX Page 83 Data; raw images have none, so their size stands in) and the virtual size.

use crate::image::{bytes::Guid, Chain};

/// The company id field. bootfarm has no IEEE assignment; this one has the locally
/// administered bit (0x02 in the first octet) set, which no IEEE-assigned OUI has.
pub const COMPANY_ID: u32 = 0x02_B0_0F;

/// Stable across builds and machines (std's hashers promise neither): 128-bit FNV-1a with a
/// final fold, so nodes running different bootfarm versions still agree.
fn fnv1a128(parts: &[&[u8]]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for p in parts {
        for &b in *p {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xFF;
        h = h.wrapping_mul(PRIME);
    }
    // FNV's high bits mix least: fold them into the low ones that are kept.
    h ^= h >> 61;
    h = h.wrapping_mul(PRIME);
    h ^ (h >> 67)
}

/// The designator of a vdisk served from `chain`.
pub fn designator(name: &str, chain: &Chain) -> [u8; 16] {
    designator_of(name, &chain.top().disk_id, chain.virtual_size())
}

/// The designator from its inputs (a raw image passes the NIL id).
pub fn designator_of(name: &str, disk_id: &Guid, size: u64) -> [u8; 16] {
    let h = fnv1a128(&[b"bootfarm-lun-1", name.as_bytes(), disk_id, &size.to_le_bytes()]);
    let v = (6u128 << 124) | (u128::from(COMPANY_ID) << 100) | (h & ((1u128 << 100) - 1));
    v.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{write, ChainLimits};
    use std::path::PathBuf;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bootfarm-scsi-ident-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn open(p: &std::path::Path) -> Chain {
        Chain::open(p, ChainLimits::default()).unwrap()
    }

    #[test]
    fn layout_is_naa6_with_the_company_id() {
        let d = designator_of("win10", &[7; 16], 1 << 30);
        assert_eq!(d[0] >> 4, 6);
        let cid = (u32::from(d[0] & 0x0F) << 20) | (u32::from(d[1]) << 12) | (u32::from(d[2]) << 4) | u32::from(d[3] >> 4);
        assert_eq!(cid, COMPANY_ID);
        // Deterministic: this literal is what every node and every version must compute (a
        // change here renames every LUN a Windows target knows).
        assert_eq!(d, [0x60, 0x2b, 0x00, 0xfa, 0x27, 0x72, 0xf7, 0x1c, 0x9d, 0xc4, 0x97, 0xb7, 0x91, 0x67, 0x9e, 0x53]);
        assert_ne!(&d[4..], &[0; 12]);
    }

    #[test]
    fn differs_by_name_id_and_size() {
        let base = designator_of("a", &[1; 16], 4096);
        assert_ne!(base, designator_of("b", &[1; 16], 4096));
        assert_ne!(base, designator_of("a", &[2; 16], 4096));
        assert_ne!(base, designator_of("a", &[1; 16], 8192));
        assert_ne!(designator_of("ab", &[0; 16], 0), designator_of("a", &[b'b'; 16], 0));
    }

    #[test]
    fn replicas_agree_versions_differ() {
        let d = dir("replica");
        // VHDX: Page 83 Data, written at random by create_vhdx.
        let a = d.join("a.vhdx");
        write::create_vhdx(&a, 8 << 20, 1 << 20, 512, None).unwrap();
        let copy = d.join("copy.vhdx");
        std::fs::copy(&a, &copy).unwrap();
        let (ca, cc) = (open(&a), open(&copy));
        assert_ne!(ca.top().disk_id, [0; 16]);
        assert_ne!(ca.top().disk_id, ca.top().id, "Page 83 Data is not the DataWriteGuid");
        assert_eq!(designator("win", &ca), designator("win", &cc), "a byte-identical replica is the same disk");
        let other = d.join("other.vhdx");
        write::create_vhdx(&other, 8 << 20, 1 << 20, 512, None).unwrap();
        assert_ne!(designator("win", &ca), designator("win", &open(&other)), "another image of the same size is another disk");
        let v2 = d.join("a-v2.vhdx");
        write::new_version(&a, &v2, ChainLimits::default()).unwrap();
        assert_ne!(designator("win", &ca), designator("win", &open(&v2)));

        // VHD: the footer's unique id (bytes 68..84 of the footer, at the end of the file).
        let h = d.join("h.vhd");
        write::create_vhd(&h, 8 << 20, 2 << 20, None).unwrap();
        let bytes = std::fs::read(&h).unwrap();
        let footer = &bytes[bytes.len() - 512..];
        let ch = open(&h);
        assert_eq!(&ch.top().disk_id[..], &footer[68..84]);
        assert_eq!(designator("win", &ch), designator_of("win", footer[68..84].try_into().unwrap(), 8 << 20));

        // Raw: no id, name + size.
        let r = d.join("r.img");
        std::fs::write(&r, vec![0u8; 1 << 20]).unwrap();
        let cr = open(&r);
        assert_eq!(cr.top().disk_id, [0; 16]);
        assert_eq!(designator("r", &cr), designator_of("r", &[0; 16], 1 << 20));
        let _ = std::fs::remove_dir_all(&d);
    }
}
