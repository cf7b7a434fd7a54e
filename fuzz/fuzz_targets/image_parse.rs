//! Feeds arbitrary bytes to the VHD/VHDX/raw parsers (the file name picks the expected format)
//! and reads every byte a parsed image claims to hold. Seed corpus: any image from the tests.
//! Run: cargo install cargo-fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run image_parse
#![no_main]

use bootfarm::image::{Backing, Chain, Layer};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let name = match data.first().map(|b| b % 3) {
        Some(0) => "fuzz.vhd",
        Some(1) => "fuzz.vhdx",
        _ => "fuzz.img",
    };
    if let Ok(mut layer) = Layer::parse(Path::new(name), Backing::Bytes(data.to_vec())) {
        let _ = layer.deep_check();
        layer.parent = None;
        let chain = Chain { layers: vec![layer] };
        let size = chain.virtual_size().min(1 << 26);
        let mut n = 0;
        chain.read(0, size, &mut |s| n += s.len()).unwrap();
        assert_eq!(n, size);
    }
});
