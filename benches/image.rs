//! Mapping a read to segments: ns per 4 KiB and per 1 MiB read on a dynamic VHD, a dynamic
//! VHDX, a depth-3 VHDX chain (partially present blocks: sector-bitmap lookups) and a 64 TiB
//! sparse VHDX (the cost must not depend on the disk size). Images are built in a temp folder.

use bootfarm::image::write::{create_vhd, create_vhdx, new_version_of, Writer};
use bootfarm::image::{Chain, ChainLimits, Segment};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 256 * MIB;

fn fill(path: &Path, ranges: &[(u64, u64)]) {
    let mut w = Writer::open(path).unwrap();
    let chunk = vec![0xA5u8; MIB as usize];
    for &(off, len) in ranges {
        let mut at = off;
        while at < off + len {
            let n = MIB.min(off + len - at);
            w.write(at, &chunk[..n as usize]).unwrap();
            at += n;
        }
    }
    w.finish().unwrap();
}

fn images(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let vhd = dir.join("dyn.vhd");
    create_vhd(&vhd, SIZE, 2 * MIB, None).unwrap();
    fill(&vhd, &[(0, SIZE)]);
    let vhdx = dir.join("dyn.vhdx");
    create_vhdx(&vhdx, SIZE, 32 * MIB, 512, None).unwrap();
    fill(&vhdx, &[(0, SIZE)]);
    // Depth 3: base full, two versions each writing every other 64 KiB of the first 64 MiB.
    let v2 = dir.join("v2.avhdx");
    let v3 = dir.join("v3.avhdx");
    new_version_of(&vhdx, &v2).unwrap();
    fill(&v2, &(0..512).map(|i| (i * 128 * 1024, 64 * 1024)).collect::<Vec<_>>());
    new_version_of(&v2, &v3).unwrap();
    fill(&v3, &(0..512).map(|i| (i * 128 * 1024 + 32 * 1024, 64 * 1024)).collect::<Vec<_>>());
    let huge = dir.join("huge.vhdx");
    create_vhdx(&huge, 64 << 40, 32 * MIB, 512, None).unwrap();
    fill(&huge, &[(0, 64 * MIB), ((64 << 40) - 64 * MIB, 64 * MIB)]);
    vec![("vhd-dynamic", vhd), ("vhdx-dynamic", vhdx), ("vhdx-chain3", v3), ("vhdx-64TiB", huge)]
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("bootfarm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, path) in images(&dir) {
        let chain = Chain::open(&path, ChainLimits::default()).unwrap();
        let size = chain.virtual_size();
        // 4 KiB reads inside the first 64 MiB (allocated in every image), pseudo-random.
        let offsets: Vec<u64> = (0..4096u64).map(|i| (i.wrapping_mul(2_654_435_761) % (64 * MIB / 4096)) * 4096).collect();
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(4096));
        let mut i = 0;
        g.bench_function("read 4KiB", |b| {
            b.iter(|| {
                i = (i + 1) % offsets.len();
                let mut n = 0u64;
                chain.read(offsets[i], 4096, &mut |s: Segment| n += black_box(s).len()).unwrap();
                n
            })
        });
        g.throughput(Throughput::Bytes(MIB));
        let mut j = 0u64;
        g.bench_function("read 1MiB", |b| {
            b.iter(|| {
                j = (j + 1) % 63;
                let mut n = 0u64;
                chain.read(j * MIB + 512, MIB, &mut |s: Segment| n += black_box(s).len()).unwrap();
                n
            })
        });
        g.finish();
        assert!(size >= 64 * MIB);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
