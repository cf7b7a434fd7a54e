//! Reservations and ORWRITE through a whole session: the state shared by sessions of
//! different initiators, RESERVATION CONFLICT on the wire, the OR against image and cache.

use super::*;

const OTHER: &str = "iqn.1994-05.com.redhat:test-b";

pub(super) fn prout(itt: u32, cmdsn: u32, sa: u8, kind: u8, key: u64, sa_key: u64) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    let cdb = [0x5F, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    cmd(itt, cmdsn, FLAG_FINAL | FLAG_WRITE, 24, &cdb, &p)
}

fn orwrite(itt: u32, cmdsn: u32, lba: u64, data: &[u8]) -> Vec<u8> {
    let mut c = vec![0x8B, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&((data.len() / 512) as u32).to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    cmd(itt, cmdsn, FLAG_FINAL | FLAG_WRITE, data.len() as u32, &c, data)
}

#[test]
fn a_persistent_reservation_holds_across_sessions_and_initiators() {
    let f = fixture("reserve", "", "");
    let mut e = env(&f);
    let now = Instant::now();
    // A registers key 1 and takes Write Exclusive.
    let mut s = login();
    s.extend(prout(1, 2, 0, 0, 0, 1));
    s.extend(prout(2, 3, 1, 1, 1, 0));
    s.extend(write(3, 4, 8, &[1; 512], 512, true));
    let (out, _) = drive(&mut e, &s, &[], now);
    let p = after_login(&out);
    assert_eq!([result(&p, 1).1, result(&p, 2).1, result(&p, 3).1], [Some(0); 3]);
    // B (another initiator, another worker's session): reads pass, writes conflict.
    let mut s = login_as(OTHER, TARGET, OPS);
    s.extend(read(4, 2, 8, 1));
    s.extend(write(5, 3, 8, &[2; 512], 512, true));
    s.extend(write(6, 4, 8, &[2; 512], 0, false));
    s.extend(data_out(6, TAG_NONE, 0, &[2; 512], true));
    let (out, _) = drive(&mut e, &s, &[], now);
    let p = after_login(&out);
    assert_eq!(result(&p, 4).1, Some(0));
    assert_eq!(result(&p, 5).1, Some(wire::status::RESERVATION_CONFLICT));
    assert_eq!(result(&p, 6).1, Some(wire::status::RESERVATION_CONFLICT), "after its unsolicited data");
    // A's session ended: the persistent reservation stays; A clears it, then B writes.
    let mut s = login_as(OTHER, TARGET, OPS);
    s.extend(write(7, 2, 8, &[2; 512], 512, true));
    let (out, _) = drive(&mut e, &s, &[], now);
    assert_eq!(result(&after_login(&out), 7).1, Some(wire::status::RESERVATION_CONFLICT));
    let mut s = login();
    s.extend(prout(8, 2, 3, 0, 1, 0));
    let (out, _) = drive(&mut e, &s, &[], now);
    assert_eq!(result(&after_login(&out), 8).1, Some(0));
    let mut s = login_as(OTHER, TARGET, OPS);
    s.extend(write(9, 2, 8, &[2; 512], 512, true));
    let (out, _) = drive(&mut e, &s, &[], now);
    assert_eq!(result(&after_login(&out), 9).1, Some(0));
}

#[test]
fn reserve6_ends_with_its_session() {
    let f = fixture("reserve6", "", "");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = login();
    s.extend(cmd(1, 2, FLAG_FINAL, 0, &[0x16, 0, 0, 0, 0, 0], &[]));
    // While A's session lives, B's command conflicts: both in one drive, interleaved.
    let mut a = Session::new(&e, peer(), now);
    let (mut rx, mut out) = (s, Vec::new());
    pump(&mut a, &mut e, &mut rx, &mut out, now);
    assert_eq!(result(&after_login(&out), 1).1, Some(0));
    let mut s = login_as(OTHER, TARGET, OPS);
    s.extend(read(2, 2, 0, 1));
    let (out, _) = drive(&mut e, &s, &[], now);
    assert_eq!(result(&after_login(&out), 2).1, Some(wire::status::RESERVATION_CONFLICT));
    a.on_closed(&mut e, false, now);
    drop(a);
    let mut s = login_as(OTHER, TARGET, OPS);
    s.extend(read(3, 2, 0, 1));
    let (out, _) = drive(&mut e, &s, &[], now);
    assert_eq!(result(&after_login(&out), 3).1, Some(0));
}

#[test]
fn orwrite_ors_with_the_image_and_the_cache() {
    let f = fixture("orwrite", "", "");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = login();
    s.extend(write(1, 2, 8, &[0x0F; 512], 512, true));
    s.extend(orwrite(2, 3, 8, &[0x30; 1024]));
    s.extend(read(3, 4, 8, 2));
    let (out, _) = drive(&mut e, &s, &[], now);
    let p = after_login(&out);
    assert_eq!(result(&p, 2).1, Some(0));
    let got = result(&p, 3).0;
    assert!(got[..512].iter().all(|&b| b == 0x3F), "cache block ORed");
    let image: Vec<u8> = f.content[9 * 512..10 * 512].iter().map(|b| b | 0x30).collect();
    assert_eq!(got[512..], image[..], "image block ORed");
}
