//! Random chains read like a flat model, and mutated images never panic the parsers or readers.

mod common;
use bootfarm::image::write::{create_vhd, create_vhdx, new_version_of, Writer};
use bootfarm::image::{Backing, Chain, ChainLimits, Layer, Segment};
use common::*;
use proptest::prelude::*;
use std::path::Path;

const SIZE: u64 = 6 << 20;

#[derive(Debug, Clone)]
struct Plan {
    vhdx: bool,
    /// VHD block size exponent (VHDX uses 1 MiB blocks, its minimum).
    vhd_block_shift: u32,
    /// Per layer (base first): writes of (sector, sectors).
    layers: Vec<Vec<(u64, u64)>>,
}

fn plan() -> impl Strategy<Value = Plan> {
    let write = (0u64..SIZE / 512, 1u64..300);
    (any::<bool>(), 12u32..=21, prop::collection::vec(prop::collection::vec(write, 0..8), 1..5))
        .prop_map(|(vhdx, vhd_block_shift, layers)| Plan { vhdx, vhd_block_shift, layers })
}

fn apply(plan: &Plan, dir: &TempDir) -> (Vec<u8>, std::path::PathBuf) {
    let ext = if plan.vhdx { "vhdx" } else { "vhd" };
    let mut model = vec![0u8; SIZE as usize];
    let mut top = dir.join(&format!("l0.{ext}"));
    if plan.vhdx {
        create_vhdx(&top, SIZE, 1 << 20, 512, None).unwrap();
    } else {
        create_vhd(&top, SIZE, 1 << plan.vhd_block_shift, None).unwrap();
    }
    for (i, writes) in plan.layers.iter().enumerate() {
        if i > 0 {
            let child = dir.join(&format!("l{i}.{ext}"));
            new_version_of(&top, &child).unwrap();
            top = child;
        }
        let mut w = Writer::open(&top).unwrap();
        for (k, &(sector, n)) in writes.iter().enumerate() {
            let off = sector * 512;
            let len = (n * 512).min(SIZE - off);
            let data = pattern((i * 31 + k) as u64, off, len as usize);
            w.write(off, &data).unwrap();
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
        w.finish().unwrap();
    }
    (model, top)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn random_chains_read_like_a_flat_model(plan in plan(), probes in prop::collection::vec((0u64..SIZE, 1u64..300_000), 8)) {
        let dir = TempDir::new("model");
        let (model, top) = apply(&plan, &dir);
        let chain = Chain::open(&top, ChainLimits::default()).unwrap();
        prop_assert_eq!(chain.layers.len(), plan.layers.len());
        let mut all = vec![0u8; SIZE as usize];
        chain.read_into(0, &mut all).unwrap();
        prop_assert!(all == model, "whole-disk read differs from the model");
        for (off, len) in probes {
            let len = len.min(SIZE - off);
            let mut total = 0u64;
            let mut at = off as usize;
            let mut ok = true;
            chain.read(off, len, &mut |s| {
                total += s.len();
                ok &= !s.is_empty();
                match s {
                    Segment::Data(d) => { ok &= d == &model[at..at + d.len()]; }
                    Segment::Zero(n) => { ok &= model[at..at + n as usize].iter().all(|&b| b == 0); }
                }
                at += s.len() as usize;
            }).unwrap();
            prop_assert!(ok, "segments of ({}, {}) disagree with the model", off, len);
            prop_assert_eq!(total, len);
        }
        let past_end = chain.read(SIZE - 1, 2, &mut |_| {}).is_err();
        prop_assert!(past_end);
        for l in &chain.layers {
            prop_assert!(l.deep_check().is_ok());
        }
    }
}

/// Reads everything a parsed (possibly corrupt) single image claims to hold.
fn read_all(path: &Path, bytes: Vec<u8>) {
    if let Ok(layer) = Layer::parse(path, Backing::Bytes(bytes)) {
        let _ = layer.deep_check();
        let mut layer = layer;
        layer.parent = None; // read it as if it were a base: every lookup is exercised
        let chain = Chain { layers: vec![layer] };
        let size = chain.virtual_size().min(64 << 20);
        let mut n = 0;
        chain.read(0, size, &mut |s| n += s.len()).unwrap();
        assert_eq!(n, size);
    }
}

#[test]
fn mutated_images_never_panic() {
    let dir = TempDir::new("mutate");
    let plan = Plan { vhdx: true, vhd_block_shift: 0, layers: vec![vec![(0, 64), (4000, 700)], vec![(10, 9), (2100, 100)]] };
    let (_, vhdx_top) = apply(&plan, &dir);
    let plan = Plan { vhdx: false, vhd_block_shift: 16, layers: vec![vec![(0, 64), (4000, 700)], vec![(10, 9), (2100, 100)]] };
    let dir2 = TempDir::new("mutate-vhd");
    let (_, vhd_top) = apply(&plan, &dir2);
    let mut rng: u64 = 0x1234_5678_9ABC_DEF1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for (path, hot) in [
        (&vhdx_top, vec![0u64, 64 << 10, 128 << 10, 192 << 10, 256 << 10, 2 << 20, (2 << 20) + (64 << 10), 3 << 20]),
        (&vhd_top, vec![0, 512, 1536]),
    ] {
        let original = read_file(path);
        let len = original.len() as u64;
        for i in 0..1500 {
            let mut b = original.clone();
            for _ in 0..1 + next() % 4 {
                // Mostly near structures (where parsers look), sometimes anywhere, sometimes the end.
                let base = match next() % 4 {
                    0 => next() % len,
                    1 => len.saturating_sub(512) + next() % 512.min(len),
                    _ => hot[(next() % hot.len() as u64) as usize] + next() % 512,
                };
                let at = (base % len) as usize;
                b[at] = next() as u8;
            }
            if i % 50 == 0 {
                b.truncate((next() % len) as usize);
            }
            read_all(path, b);
        }
    }
}
