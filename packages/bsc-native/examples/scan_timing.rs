//! Times each scan kernel on random 256-bit codes: `cargo run --release --example scan_timing [N]`.

use bsc_native::scan::{top_k_with, Kernel};
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let codes: Vec<u64> = (0..n * 4).map(|_| next()).collect();
    let query: Vec<u64> = (0..4).map(|_| next()).collect();
    for kernel in Kernel::available() {
        let mut times = Vec::new();
        for _ in 0..101 {
            let start = Instant::now();
            let hits = top_k_with(kernel, &codes, &query, 1, u32::MAX, |r| Some(r as u64), true);
            times.push(start.elapsed().as_secs_f64());
            std::hint::black_box(hits);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!("{:>18} n={n}: median {:8.1} us, {:.3} ns/code", kernel.name(), median * 1e6, median * 1e9 / n as f64);
    }
}
