//! Transmission against a flat model of the disk: replies match it whatever the split, long
//! reads cross batches, the queue depth holds, out-of-bounds requests get errors, block status.

use super::*;

#[test]
fn replies_match_a_flat_model_of_the_disk() {
    let f = fixture("model", "queue_depth_max = 8");
    for structured in [false, true] {
        let s = script(0x5eed, &f, structured, 300, 40_000, 8);
        let mut e = env(&f);
        let run = drive(&mut e, &s.bytes, &[], Instant::now());
        check_against_model(&f, &s, structured, &run.out);
        assert_eq!(e.counters.get(Counter::NbdErrors), s.expect.iter().filter(|r| r.error != 0).count() as u64);
    }
}

/// Without the overflow file's mappings (`cache_overflow_mapped = false`) overflow-file blocks
/// are copied into the scratch, at most reply_scratch_bytes_max per batch: long reads of them
/// go out over several batches, with the same bytes. With them (the default) nothing is
/// copied, and the scratch limit splits nothing.
#[test]
fn reads_of_overflow_blocks_continue_across_batches() {
    let unmapped = "queue_depth_max = 8\ncache_ram_bytes_per_target = 0\ncache_overflow_mapped = false";
    let wide = fixture("overflow-wide", unmapped);
    let narrow = fixture("overflow", &format!("{unmapped}\nreply_scratch_bytes_max = 8192"));
    let mapped = fixture("overflow-mapped", "queue_depth_max = 8\ncache_ram_bytes_per_target = 0\nreply_scratch_bytes_max = 8192");
    for structured in [false, true] {
        let s = script(0x0fe1, &narrow, structured, 200, 40_000, 8);
        let a = drive(&mut env(&wide), &s.bytes, &[], Instant::now());
        let b = drive(&mut env(&narrow), &s.bytes, &[], Instant::now());
        let m = drive(&mut env(&mapped), &s.bytes, &[], Instant::now());
        check_against_model(&wide, &s, structured, &a.out);
        check_against_model(&narrow, &s, structured, &b.out);
        check_against_model(&mapped, &s, structured, &m.out);
        // Structured replies split into more data chunks where a part ends.
        assert!(structured || a.out == b.out, "the same bytes, in more batches");
        assert!(b.batches > a.batches + 20, "scratch-bounded batches: {} against {}", b.batches, a.batches);
        assert!(m.out == a.out && m.batches == a.batches, "mapped: {} batches against {}", m.batches, a.batches);
    }
}

#[test]
fn the_same_stream_gives_the_same_replies_whatever_the_split() {
    let f = fixture("split", "queue_depth_max = 3\ncache_ram_bytes_per_target = 16384\nreply_scratch_bytes_max = 8192");
    let now = Instant::now();
    for structured in [false, true] {
        let s = script(0x5917 + structured as u64, &f, structured, 30, 6000, 3);
        let whole = drive(&mut env(&f), &s.bytes, &[], now);
        assert!(s.bytes.len() > 10_000 && whole.batches >= 30 / 3, "{} bytes, {} batches", s.bytes.len(), whole.batches);
        check_against_model(&f, &s, structured, &whole.out);
        // Every single cut, then seeded sets of many cuts, then byte by byte.
        for k in 0..=s.bytes.len() {
            assert!(drive(&mut env(&f), &s.bytes, &[k], now).out == whole.out, "cut at {k}");
        }
        let mut rng = XorShift::new(99);
        for _ in 0..200 {
            let mut cuts: Vec<usize> = (0..rng.below(40) + 1).map(|_| rng.below(s.bytes.len() as u64) as usize).collect();
            cuts.sort();
            assert!(drive(&mut env(&f), &s.bytes, &cuts, now).out == whole.out, "cuts {cuts:?}");
        }
        let cuts: Vec<usize> = (1..s.bytes.len()).collect();
        assert!(drive(&mut env(&f), &s.bytes, &cuts, now).out == whole.out, "byte by byte");
    }
}

#[test]
fn pipelined_requests_stop_at_the_queue_depth_and_go_on_after_the_release() {
    let f = fixture("depth", "queue_depth_max = 4");
    let mut e = env(&f);
    let now = Instant::now();
    let mut s = Session::new(&e, peer(), now);
    let mut rx = handshake(false);
    let hs_len = rx.len();
    for cookie in 0..10u64 {
        rx.extend(request(wire::CMD_READ, 0, cookie, cookie * 512, 512));
    }
    // The greeting went first, alone.
    let g = s.poll_transmit(&mut e, now).expect("greeting");
    assert_eq!(g.len, 18);
    assert!(!s.wants_input(), "a held batch takes no input");
    assert_eq!(s.on_input(&mut e, &rx, now), 0);
    s.on_released(&mut e, now);
    assert!(s.wants_input());
    // GO and three READs fill the batch of four; the rest waits in the receive buffer.
    let taken = s.on_input(&mut e, &rx, now);
    assert_eq!(taken, hs_len + 3 * 28);
    assert!(!s.wants_input(), "the batch is full: TCP pushes back");
    assert_eq!(s.on_input(&mut e, &rx[taken..], now), 0);
    rx.drain(..taken);
    let mut replies_seen = 3;
    assert!(s.poll_transmit(&mut e, now).is_some());
    s.on_released(&mut e, now);
    while !rx.is_empty() {
        let taken = s.on_input(&mut e, &rx, now);
        assert_eq!(taken, (rx.len() / 28).min(4) * 28, "four requests a batch");
        rx.drain(..taken);
        let b = s.poll_transmit(&mut e, now).expect("replies");
        assert_eq!(b.len, (taken / 28 * (16 + 512)) as u64);
        // Safety: held until the release below.
        let bytes = unsafe { b.to_vec() };
        for (i, r) in replies(&bytes, false, &|_| Some(512)).iter().enumerate() {
            let c = (replies_seen + i) as u64;
            assert_eq!((r.cookie, r.error), (c, 0));
            assert!(r.data[..] == f.content[c as usize * 512..][..512]);
        }
        replies_seen += taken / 28;
        s.on_released(&mut e, now);
    }
    assert_eq!(replies_seen, 10);
    assert!(s.poll_transmit(&mut e, now).is_none() && s.idle_since() == Some(now));
    assert_eq!(e.counters.get(Counter::NbdReads), 10);
}

#[test]
fn requests_out_of_bounds_get_an_error_reply_and_the_session_goes_on() {
    let f = fixture("bounds", "request_bytes_max = 4096");
    let size = SIZE as u64;
    for structured in [false, true] {
        let mut st = Vec::new();
        st.extend(request(wire::CMD_READ, 0, 1, size - 511, 512)); // past the end
        st.extend(request(wire::CMD_READ, 0, 2, 0, 8192)); // over request_bytes_max
        st.extend(request(wire::CMD_READ, 0, 3, u64::MAX - 10, 100)); // offset + length overflows
        st.extend(request(wire::CMD_WRITE, 0, 4, 0, 8192)); // over the maximum: payload skipped
        st.extend(std::iter::repeat_n(0xEEu8, 8192));
        st.extend(request(wire::CMD_WRITE, 0, 5, size - 100, 200)); // past the end: skipped
        st.extend(std::iter::repeat_n(0xEEu8, 200));
        st.extend(request(42, 0, 6, 0, 0)); // unknown command
        st.extend(request(wire::CMD_TRIM, 0, 7, size, 1));
        st.extend(request(wire::CMD_BLOCK_STATUS, 0, 8, 0, 512)); // no meta context for simple
        st.extend(request(wire::CMD_READ, 0, 9, 0, 512)); // still serving, the disk unchanged
        st.extend(request(wire::CMD_DISC, 0, 0, 0, 0));
        let (got, e) = run_after_handshake(&f, structured, &st);
        let errors: Vec<(u64, u32)> = got.iter().map(|r| (r.cookie, r.error)).collect();
        let block_status = if structured { 0 } else { wire::EINVAL };
        assert_eq!(
            errors,
            [
                (1, wire::EINVAL),
                (2, wire::EOVERFLOW),
                (3, wire::EINVAL),
                (4, wire::EOVERFLOW),
                (5, wire::EINVAL),
                (6, wire::EINVAL),
                (7, wire::EINVAL),
                (8, block_status),
                (9, 0)
            ],
            "structured {structured}"
        );
        assert!(got[8].data[..] == f.content[..512], "nothing of the refused writes landed");
        assert_eq!(e.counters.get(Counter::NbdErrors), if structured { 7 } else { 8 });
        assert_eq!(e.counters.get(Counter::NbdWrittenBytes), 0);
    }
}

#[test]
fn block_status_reports_written_and_zeroed_blocks() {
    let f = fixture("status", "");
    let mut st = request(wire::CMD_WRITE, 0, 1, 8192, 4096);
    st.extend(std::iter::repeat_n(7u8, 4096));
    st.extend(request(wire::CMD_WRITE_ZEROES, 0, 2, 16384, 8192));
    st.extend(request(wire::CMD_BLOCK_STATUS, 0, 3, 0, 32768));
    st.extend(request(wire::CMD_BLOCK_STATUS, wire::CMD_FLAG_REQ_ONE, 4, 0, 32768));
    st.extend(request(wire::CMD_BLOCK_STATUS, 0, 5, 0, 0)); // empty: refused
    let (got, _) = run_after_handshake(&f, true, &st);
    assert_eq!(got.iter().map(|r| (r.cookie, r.error)).collect::<Vec<_>>(), [(1, 0), (2, 0), (3, 0), (4, 0), (5, wire::EINVAL)]);
    let extents = |d: &[u8]| -> Vec<(u32, u32)> {
        assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), wire::BASE_ALLOCATION_ID);
        d[4..].chunks(8).map(|c| (u32::from_be_bytes(c[..4].try_into().unwrap()), u32::from_be_bytes(c[4..].try_into().unwrap()))).collect()
    };
    let all = extents(&got[2].data);
    assert_eq!(all.iter().map(|e| e.0 as u64).sum::<u64>(), 32768, "{all:?}");
    assert!(all.iter().any(|&(_, flags)| flags & 2 != 0), "the zeroed range reads as zero: {all:?}");
    assert_eq!(extents(&got[3].data).len(), 1, "REQ_ONE: one extent");
}
