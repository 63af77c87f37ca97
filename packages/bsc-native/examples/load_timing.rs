//! Times the phases of loading a saved cache:
//! `cargo run --release --example load_timing PATH [make]` (`make` first writes PATH: 1M
//! entries with 200-byte responses, touched in random order).
use std::path::PathBuf;
use std::time::Instant;

use bsc_native::format::{self, Extras, PendingSave};
use bsc_native::CacheCore;

fn main() {
    let path = PathBuf::from(std::env::args().nth(1).expect("usage: load_timing PATH [make]"));
    if std::env::args().nth(2).as_deref() == Some("make") {
        let n = 1_000_000u64;
        let mut core = CacheCore::new(256, n as usize).unwrap();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rng = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut ids = Vec::new();
        for _ in 0..n {
            let code = [rng(), rng(), rng(), rng()];
            ids.push(core.put(&code, &[b'x'; 200], 1e9).unwrap().0);
        }
        for _ in 0..n {
            core.touch(ids[(rng() % n) as usize], 1e9 + 1.0).unwrap();
        }
        let t = Instant::now();
        let pending = PendingSave::begin(&path).unwrap();
        format::write_cache(&path, pending.file(), &core, &Extras::default()).unwrap();
        pending.commit().unwrap();
        println!("save {:?}", t.elapsed());
    }
    for _ in 0..3 {
        let t = Instant::now();
        let opened = format::open(&path).unwrap();
        let t_open = t.elapsed();
        let core = opened.cache(false).unwrap();
        let t_cache = t.elapsed();
        let hit = core.nearest_in(&[1, 2, 3, 4], 256, b"", 1e9).unwrap();
        let t_get = t.elapsed();
        println!("open {t_open:?} cache {t_cache:?} first search {t_get:?} {hit:?}");
    }
}
