//! Writes seed files for the fuzzer (valid caches and indexes of a few sizes):
//! `cargo run --release --example fuzz_corpus DIR`.
use std::path::PathBuf;

use bsc_native::format::{self, Counters, Extras, PendingSave};
use bsc_native::{CacheCore, CodeIndex};

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: fuzz_corpus DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let extras = Extras {
        fingerprint: "bsc-srp1:dim=8:bits=64:seed=1".into(),
        meta: b"{}".to_vec(),
        counters: Counters { hits: 3, misses: 2, evictions: 1 },
    };
    for n in [0u64, 1, 5, 40] {
        let mut core = CacheCore::new(64, 32).unwrap();
        for i in 0..n {
            core.put(&[i * 0x9E37_79B9], &vec![i as u8; (i as usize * 13) % 90], i as f64).unwrap();
        }
        let ids = core.lru_order();
        if let Some(&id) = ids.get(1) {
            core.touch(id, 99.0).unwrap();
            core.delete(ids[0]);
        }
        let path = dir.join(format!("cache-{n}.bsc"));
        let pending = PendingSave::begin(&path).unwrap();
        format::write_cache(&path, pending.file(), &core, &extras).unwrap();
        pending.commit().unwrap();

        let mut index = CodeIndex::new(128).unwrap();
        let codes: Vec<u64> = (0..2 * n).collect();
        if n > 0 {
            let ids = index.add(&codes).unwrap();
            index.remove(ids[0]);
        }
        let path = dir.join(format!("index-{n}.bsc"));
        let pending = PendingSave::begin(&path).unwrap();
        format::write_index(&path, pending.file(), &index, &extras).unwrap();
        pending.commit().unwrap();
    }
}
