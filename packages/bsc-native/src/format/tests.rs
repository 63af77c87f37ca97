//! Round trips, refused files and seeded mutations of the whole format.

use std::path::Path;

use proptest::prelude::*;

use super::layout::*;
use super::*;
use crate::cache::CacheCore;
use crate::error::Error;
use crate::index::{CodeIndex, Id};

fn save_cache(core: &CacheCore, path: &Path, extras: &Extras) {
    let pending = PendingSave::begin(path).unwrap();
    write_cache(path, pending.file(), core, extras).unwrap();
    pending.commit().unwrap();
}

fn sample(n: u64) -> CacheCore {
    let mut core = CacheCore::new(128, 1000).unwrap();
    for i in 0..n {
        let payload = vec![i as u8; (i as usize * 37) % 300];
        core.put(&[i, i * 7], &payload, 1_000.0 + i as f64).unwrap();
    }
    core
}

#[test]
fn cache_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.bsc");
    let mut core = sample(50);
    let ids = core.lru_order();
    core.touch(ids[30], 2_000.5).unwrap();
    core.delete(ids[10]);
    let extras = Extras {
        fingerprint: "fp".into(),
        meta: b"{}".to_vec(),
        counters: Counters { hits: 1, misses: 2, evictions: 3 },
    };
    save_cache(&core, &path, &extras);
    let opened = open(&path).unwrap();
    assert_eq!(opened.extras().unwrap(), extras);
    let loaded = opened.cache(true).unwrap();
    assert_eq!(loaded.lru_order(), core.lru_order());
    for id in core.lru_order() {
        assert_eq!(loaded.peek(id).unwrap(), core.peek(id).unwrap());
        assert_eq!(loaded.code(id), core.code(id));
    }
    assert_eq!(loaded.response_bytes(), core.response_bytes());
}

/// A file written by the version-1 code (`tests/data/cache-v1.bsc`: 20 entries, one deleted,
/// in two namespaces, some with a TTL or a key, touched at fractional seconds) loads with its
/// times rounded down to the second, its TTL deadlines to the tenth, its counts and order.
#[test]
fn version_1_files_are_converted() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cache-v1.bsc");
    let opened = open(&path).unwrap();
    assert_eq!(opened.version, 1);
    assert_eq!(opened.extras().unwrap().counters, Counters { hits: 5, misses: 6, evictions: 0 });
    let mut core = opened.cache(true).unwrap();
    let mut order: Vec<Id> = vec![0, 7, 3];
    order.extend((0..20).rev().filter(|i| ![0, 7, 3, 11].contains(i)));
    assert_eq!(core.lru_order(), order);
    let base = 1_700_000_000u32;
    for i in 0..20u64 {
        let Some(view) = core.peek(i).unwrap() else {
            assert_eq!(i, 11);
            continue;
        };
        assert_eq!(view.payload, format!("answer {i}").into_bytes());
        assert_eq!(view.created_at, f64::from(base + i as u32));
        let (last, count) = match i {
            0 => (base + 201, 1),
            7 => (base + 200, 1),
            3 => (base + 102, 300),
            _ => (base + i as u32, 0),
        };
        assert_eq!((view.last_accessed, view.access_count), (f64::from(last), count), "entry {i}");
        let name: &[u8] = if i % 3 == 0 { b"tenant" } else { b"" };
        // Deadlines were created + 100 s at .25: kept to the tenth, rounded down.
        let deadline = (i % 4 == 0).then(|| f64::from(base + 100 + i as u32) + 0.2);
        let (got_name, got_deadline) = core.placement(i).unwrap();
        assert_eq!(got_name, name);
        assert_eq!(got_deadline.map(|d| (d * 10.0).round() / 10.0), deadline, "entry {i}");
        if i % 5 == 0 {
            assert_eq!(core.find_key(i + 1, name, f64::from(base + 50)), Some(i));
        }
    }
    // Saved again, it is a version-2 file with the same contents.
    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("v2.bsc");
    save_cache(&core, &again, &Extras::default());
    let reopened = open(&again).unwrap();
    assert_eq!(reopened.version, VERSION);
    let loaded = reopened.cache(true).unwrap();
    assert_eq!(loaded.lru_order(), core.lru_order());
    for id in core.lru_order() {
        assert_eq!(loaded.peek(id).unwrap(), core.peek(id).unwrap());
        assert_eq!(loaded.placement(id), core.placement(id));
    }
    // And it keeps working: a put evicts nothing (room for 100), a touch moves an entry first.
    core.touch(19, f64::from(base + 300)).unwrap();
    assert_eq!(core.lru_order()[0], 19);
    assert!(core.put(&[5], b"new", f64::from(base + 301)).unwrap().1.is_empty());
}

#[test]
fn round_trip_keeps_spilled_counts_seconds_ties_and_ttl_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.bsc");
    let mut core = CacheCore::new(64, 5000).unwrap();
    let ids: Vec<Id> = (0..3000u64).map(|i| core.put(&[i], b"r", 1_000.0 + (i / 7) as f64).unwrap().0).collect();
    for n in 0..700 {
        core.touch(ids[5], 2_000.0 + f64::from(n)).unwrap();
    }
    let (ttl, _) = core.put_in(&[9_999], b"t", 3_000.37, b"ns", crate::cache::ttl_tenths(10.0), 0).unwrap();
    save_cache(&core, &path, &Extras::default());
    let loaded = open(&path).unwrap().cache(true).unwrap();
    assert_eq!(loaded.lru_order(), core.lru_order());
    assert_eq!(loaded.peek(ids[5]).unwrap().unwrap().access_count, 700);
    for &id in ids.iter().chain([&ttl]) {
        assert_eq!(loaded.peek(id).unwrap(), core.peek(id).unwrap());
    }
    assert_eq!(loaded.placement(ttl), Some((&b"ns"[..], Some(3_010.3))));
    // A put at a fractional second keeps its deadline to the tenth, not its creation second.
    let mut old = CacheCore::new(64, 10).unwrap();
    let (a, _) = old.put_in(&[1], b"a", 500.75, b"", crate::cache::ttl_tenths(2.0), 0).unwrap();
    assert_eq!(old.placement(a).unwrap().1, Some(502.7));
}

#[test]
fn bad_files_give_specific_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.bsc");
    save_cache(&sample(20), &path, &Extras::default());
    let good = std::fs::read(&path).unwrap();
    let check = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        open(&path).and_then(|o| o.cache(true).map(|_| ()))
    };
    assert!(matches!(check(&[]), Err(Error::EmptyFile { .. })));
    assert!(matches!(check(b"hello world, not a cache"), Err(Error::NotACacheFile { .. })));
    assert!(matches!(check(&good[..good.len() - 1]), Err(Error::Truncated { .. })));
    assert!(matches!(check(&good[..100]), Err(Error::Truncated { .. })));
    assert!(matches!(check(&good[..5]), Err(Error::Truncated { .. })));
    let mut future = good.clone();
    future[8] = VERSION as u8 + 1;
    assert!(matches!(check(&future), Err(Error::UnsupportedVersion { .. })));
    let mut flipped = good.clone();
    let last = flipped.len() - 20;
    flipped[last] ^= 1;
    assert!(matches!(check(&flipped), Err(Error::Corrupt { .. })));
    assert!(check(&good).is_ok());
}

#[test]
fn index_round_trip_searches_the_mapped_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.bsc");
    let mut index = CodeIndex::new(256).unwrap();
    let ids: Vec<Id> = index.add(&(0..400u64).collect::<Vec<_>>()).unwrap();
    index.remove(ids[3]);
    let pending = PendingSave::begin(&path).unwrap();
    write_index(&path, pending.file(), &index, &Extras::default()).unwrap();
    pending.commit().unwrap();
    let opened = open(&path).unwrap();
    assert!(matches!(opened.expect(Kind::Cache), Err(Error::NotACacheFile { .. })));
    let mut loaded = opened.index().unwrap();
    assert!(loaded.mapped_bytes() > 0 || cfg!(target_endian = "big"));
    assert_eq!(loaded.ids(), index.ids());
    let q = [4u64, 5, 6, 7];
    assert_eq!(loaded.search(&q, 5, u32::MAX).unwrap(), index.search(&q, 5, u32::MAX).unwrap());
    // A change in place writes a private copy of one page; growing copies the columns out
    // of the mapping. Ids match the original's either way.
    let two = [1, 2, 3, 4, 5, 6, 7, 8];
    assert_eq!(loaded.add(&two[..4]).unwrap(), index.add(&two[..4]).unwrap());
    assert!(loaded.mapped_bytes() > 0 || cfg!(target_endian = "big"));
    assert_eq!(loaded.add(&two[4..]).unwrap(), index.add(&two[4..]).unwrap());
    assert_eq!(loaded.mapped_bytes(), 0);
    assert_eq!(loaded.search(&q, 5, u32::MAX).unwrap(), index.search(&q, 5, u32::MAX).unwrap());
    // The writes through the private mapping never reached the file.
    let again = open(&path).unwrap().index().unwrap();
    assert_eq!(again.ids().len(), 99);
}

/// Crafted files with valid checksums: shared response records, absurd times, a lying
/// response total. Each must be refused at load.
#[test]
fn crafted_files_with_valid_checksums_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.bsc");
    save_cache(&sample(20), &path, &Extras::default());
    let good = std::fs::read(&path).unwrap();
    let section = |tag: Tag| {
        let count = le_u32(&good, 20) as usize;
        (0..count)
            .map(|i| HEADER_LEN + i * ENTRY_LEN)
            .find(|&at| good[at..at + 4] == tag)
            .map(|at| le_u64(&good, at + 8) as usize)
            .unwrap()
    };
    let load = |bytes: &mut Vec<u8>| {
        reseal(bytes);
        std::fs::write(&path, &*bytes).unwrap();
        open(&path).and_then(|o| o.cache(false).map(|_| ()))
    };
    let mut ok = good.clone();
    assert!(load(&mut ok).is_ok(), "resealing a good file keeps it good");
    // Slot 2 points at slot 1's response record (slots 0 has an empty response).
    let mut shared = good.clone();
    let payl = section(PAYL);
    let first = shared[payl + 4..payl + 8].to_vec();
    shared[payl + 8..payl + 12].copy_from_slice(&first);
    assert!(matches!(load(&mut shared), Err(Error::Corrupt { .. })));
    // A recency word past the clock, and one whose count claims a spilled count not kept.
    let rcny = section(RCNY);
    for word in [0x00ff_ffffu32, 0xff00_0000] {
        let mut odd = good.clone();
        odd[rcny + 4..rcny + 8].copy_from_slice(&word.to_le_bytes());
        assert!(matches!(load(&mut odd), Err(Error::Corrupt { .. })), "{word:#x}");
    }
    // Marks out of order.
    let rmrk = section(RMRK);
    let mut unordered = good.clone();
    unordered[rmrk..rmrk + 4].copy_from_slice(&0u32.to_le_bytes()); // the clock before every mark
    assert!(matches!(load(&mut unordered), Err(Error::Corrupt { .. })));
    // A header that counts more response bytes than the section holds.
    let mut lying = good.clone();
    lying[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(load(&mut lying), Err(Error::Corrupt { .. })));
    // An exact-match key on a free slot (slot 1, deleted), which its next entry would inherit.
    let mut keyed = CacheCore::new(64, 10).unwrap();
    for i in 0..3u64 {
        keyed.put_in(&[i], b"r", 1.0, b"", crate::cache::NEVER, i + 1).unwrap();
    }
    assert!(keyed.delete(1)); // slot 1, generation 0
    save_cache(&keyed, &path, &Extras::default());
    let good = std::fs::read(&path).unwrap();
    let count = le_u32(&good, 20) as usize;
    let xkey = (0..count)
        .map(|i| HEADER_LEN + i * ENTRY_LEN)
        .find(|&at| good[at..at + 4] == XKEY)
        .map(|at| le_u64(&good, at + 8) as usize)
        .unwrap();
    let mut stale = good.clone();
    assert_eq!(le_u64(&stale, xkey + 8), 0, "a deleted entry's key is cleared");
    stale[xkey + 8..xkey + 16].copy_from_slice(&9u64.to_le_bytes());
    assert!(matches!(load(&mut stale), Err(Error::Corrupt { .. })));
    let mut fine = good.clone();
    assert!(load(&mut fine).is_ok());
}

/// Seeded mutations of valid files (bit flips, byte overwrites, truncations, lying length
/// and count fields): every one must load with an error or load into a store whose every
/// operation works. A panic fails the test; allocations are bounded by the checks in
/// `parse`. `BSC_FUZZ_CASES` raises the count (CI runs the default).
#[test]
fn mutated_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.bsc");
    let mut core = sample(40);
    let ids = core.lru_order();
    core.delete(ids[5]);
    save_cache(&core, &path, &Extras::default());
    let good = std::fs::read(&path).unwrap();
    let cases: u64 = std::env::var("BSC_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut loaded = 0;
    for _ in 0..cases {
        let mut bytes = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % bytes.len().max(1);
            match next() % 5 {
                0 => bytes[at] ^= 1 << (next() % 8),
                1 => bytes[at] = next() as u8,
                2 => bytes.truncate(at),
                3 if bytes.len() >= 8 => {
                    // A lying length or count: overwrite an aligned u64 in the header/table.
                    let field = (at % (HEADER_LEN + 12 * ENTRY_LEN).min(bytes.len() - 8).max(1)) & !7;
                    let value = [0, 1, u64::MAX, u32::MAX as u64, next(), next() % 100_000];
                    bytes[field..field + 8].copy_from_slice(&value[(next() % 6) as usize].to_le_bytes());
                }
                _ => {
                    let len = bytes.len();
                    bytes.extend_from_slice(&good[..(next() as usize % len.max(1)).min(64)]);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        // Half the cases get their checksums recomputed, as a crafted file would have, so
        // the mutations reach the validation behind the checksums.
        if next() % 2 == 0 {
            reseal(&mut bytes);
        }
        std::fs::write(&path, &bytes).unwrap();
        if fuzz_file(&path) {
            loaded += 1;
        }
    }
    // Mutations in unused padding or in the responses (checked lazily) still load.
    assert!(loaded > 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    // Random operations, a save and a load: every entry, response, timestamp, counter and
    // the LRU order survive, and the loaded cache then behaves exactly like the original.
    #[test]
    fn round_trip_then_same_behaviour(max in 1usize..12, ops in prop::collection::vec((0u8..3, any::<u16>(), 0usize..200), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.bsc");
        let mut core = CacheCore::new(64, max).unwrap();
        let apply = |core: &mut CacheCore, (kind, pick, len): (u8, u16, usize), step: usize| {
            let order = core.lru_order();
            match kind {
                0 => {
                    // Three partitions; every other entry has a TTL of 1 to 8 steps.
                    let name = [b"".as_slice(), b"a", b"b"][pick as usize % 3];
                    let ttl = if pick % 2 == 0 { crate::cache::NEVER } else { crate::cache::ttl_tenths(f64::from(pick % 8 + 1)) };
                    // A third of the entries have one of five exact-match keys.
                    let key = if pick % 3 == 0 { u64::from(pick % 5) + 1 } else { 0 };
                    core.put_in(&[u64::from(pick)], &vec![pick as u8; len], step as f64, name, ttl, key).unwrap();
                }
                1 if !order.is_empty() => { core.touch(order[pick as usize % order.len()], step as f64 + 0.5).unwrap(); }
                2 if !order.is_empty() => { core.delete(order[pick as usize % order.len()]); }
                _ => {}
            }
        };
        let half = ops.len() / 2;
        for (step, op) in ops[..half].iter().enumerate() {
            apply(&mut core, *op, step);
        }
        save_cache(&core, &path, &Extras::default());
        let mut loaded = open(&path).unwrap().cache(false).unwrap();
        for (step, op) in ops[half..].iter().enumerate() {
            apply(&mut core, *op, step + half);
            apply(&mut loaded, *op, step + half);
            prop_assert_eq!(loaded.lru_order(), core.lru_order());
        }
        for id in core.lru_order() {
            prop_assert_eq!(loaded.peek(id).unwrap(), core.peek(id).unwrap());
        }
        prop_assert_eq!(loaded.response_bytes(), core.response_bytes());
        prop_assert_eq!(loaded.len(), core.len());
        prop_assert_eq!(loaded.expirations, core.expirations);
        let now = ops.len() as f64;
        for id in core.lru_order() {
            prop_assert_eq!(loaded.placement(id), core.placement(id));
        }
        for q in 0..8u64 {
            for name in [b"".as_slice(), b"a", b"b"] {
                prop_assert_eq!(loaded.nearest_in(&[q], 64, name, now).unwrap(), core.nearest_in(&[q], 64, name, now).unwrap());
                prop_assert_eq!(loaded.find_key(q, name, now), core.find_key(q, name, now));
            }
        }
    }
}
