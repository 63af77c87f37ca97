//! Times the multi-index against the flat scan on random codes:
//! `cargo run --release --example mih_timing [N] [m]`.
use bsc_native::mih::{Geometry, Mih};
use bsc_native::scan::top_k;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let mut s = 0x1234_5678_9ABC_DEF1u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let words = 4;
    let codes: Vec<u64> = (0..n * words).map(|_| next()).collect();
    let geometry = match args.get(2).and_then(|a| a.parse().ok()) {
        Some(m) => Geometry::with_substrings(256, m),
        None => Geometry::for_entries(256, n),
    };
    let slots: Vec<u32> = (0..n as u32).collect();
    let t = Instant::now();
    let mih = Mih::build(geometry, &codes, words, &slots, 2).unwrap();
    println!(
        "n={n} {:?} build {:.2?} memory {:.1} B/entry",
        geometry,
        t.elapsed(),
        mih.memory_bytes() as f64 / n as f64
    );
    let queries: Vec<Vec<u64>> = (0..200).map(|_| (0..words).map(|_| next()).collect()).collect();
    for r in [20u32, 30, 37, 45, 52] {
        let mut times = Vec::new();
        for q in &queries {
            let t = Instant::now();
            let got = mih.search(&codes, q, 1, r, |row| Some(row as u64));
            times.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(got);
        }
        times.sort_by(f64::total_cmp);
        let cost = mih.cost(r);
        println!(
            "r={r}: p50 {:.0} us p99 {:.0} us  est {:.0} us (buckets {:.0}, cand {:.0})",
            times[times.len() / 2],
            times[times.len() * 99 / 100],
            cost.nanos() / 1e3,
            cost.buckets,
            cost.candidates
        );
    }
    let mut times = Vec::new();
    for q in queries.iter().take(30) {
        let t = Instant::now();
        std::hint::black_box(top_k(&codes, q, 1, 52, |row| Some(row as u64), true));
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    println!("flat p50 {:.0} us", times[times.len() / 2]);
}
