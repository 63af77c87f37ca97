//! Hamming-distance scan kernels over a dense, row-major code matrix.
//!
//! A code is `words` little-endian `u64` words; `codes` holds `n` codes back to back. The scan
//! keeps the `k` best rows within `max_distance`, ordered by `(distance, tie_key(row))`, so
//! results are deterministic whatever the storage order.
//!
//! The kernels are portable Rust; on x86_64 the same loops are compiled a second time with the
//! `popcnt` target feature and picked at run time, so a wheel built for the x86_64 baseline
//! still uses the hardware instruction where the CPU has it.

use std::collections::BinaryHeap;

/// Hamming distance between two codes of equal length.
#[inline(always)]
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// One result of a scan: the row position in the dense matrix and its distance to the query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    pub distance: u32,
    pub row: usize,
}

/// Collector of the best `k` rows: a max-heap of size `k`, so a scan costs O(n log k) even
/// when `k` is as large as the index.
struct TopK<F: Fn(usize) -> u64> {
    k: usize,
    /// Largest distance that can still enter the result: `max_distance` until the heap is
    /// full, then the distance of its worst item.
    bound: u32,
    tie_key: F,
    // (distance, tie key, row); the worst item on top.
    heap: BinaryHeap<(u32, u64, usize)>,
}

impl<F: Fn(usize) -> u64> TopK<F> {
    fn new(k: usize, max_distance: u32, tie_key: F) -> Self {
        Self {
            k,
            bound: max_distance,
            tie_key,
            heap: BinaryHeap::with_capacity(k.min(4096)),
        }
    }

    #[inline(always)]
    fn offer(&mut self, distance: u32, row: usize) {
        if distance > self.bound {
            return;
        }
        // Only rows at or under the bound reach here, so the tie key lookup stays off the
        // hot path of a scan that mostly misses.
        let item = (distance, (self.tie_key)(row), row);
        if self.heap.len() < self.k {
            self.heap.push(item);
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if item >= *worst {
                return;
            }
            *worst = item;
        }
        if self.heap.len() == self.k {
            self.bound = self.heap.peek().map_or(self.bound, |worst| worst.0);
        }
    }

    fn finish(self) -> Vec<Neighbor> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|(distance, _, row)| Neighbor { distance, row })
            .collect()
    }
}

#[inline(always)]
fn scan_fixed<const W: usize, F: Fn(usize) -> u64>(codes: &[u64], query: &[u64], top: &mut TopK<F>) {
    let q: &[u64; W] = query.try_into().expect("query length equals W");
    for (row, chunk) in codes.chunks_exact(W).enumerate() {
        let mut d = 0u32;
        for w in 0..W {
            d += (chunk[w] ^ q[w]).count_ones();
        }
        top.offer(d, row);
    }
}

#[inline(always)]
fn scan_dyn<F: Fn(usize) -> u64>(codes: &[u64], query: &[u64], top: &mut TopK<F>) {
    for (row, chunk) in codes.chunks_exact(query.len()).enumerate() {
        top.offer(hamming(chunk, query), row);
    }
}

#[inline(always)]
fn scan_portable<F: Fn(usize) -> u64>(codes: &[u64], query: &[u64], top: &mut TopK<F>) {
    match query.len() {
        1 => scan_fixed::<1, F>(codes, query, top),
        2 => scan_fixed::<2, F>(codes, query, top),
        4 => scan_fixed::<4, F>(codes, query, top),
        8 => scan_fixed::<8, F>(codes, query, top),
        16 => scan_fixed::<16, F>(codes, query, top),
        _ => scan_dyn(codes, query, top),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn scan_popcnt<F: Fn(usize) -> u64>(codes: &[u64], query: &[u64], top: &mut TopK<F>) {
    scan_portable(codes, query, top)
}

/// Scans `codes` (rows of `query.len()` words) and returns up to `k` rows with distance at most
/// `max_distance`, sorted by distance, ties broken by `tie_key(row)` ascending.
///
/// # Panics
/// If `query` is empty or `codes.len()` is not a multiple of `query.len()`: callers validate
/// shapes before they get here.
pub fn top_k<F: Fn(usize) -> u64>(
    codes: &[u64],
    query: &[u64],
    k: usize,
    max_distance: u32,
    tie_key: F,
) -> Vec<Neighbor> {
    assert!(!query.is_empty(), "query must hold at least one word");
    assert_eq!(
        codes.len() % query.len(),
        0,
        "codes length is a multiple of the code length"
    );
    // A lying `k` must not size an allocation: there are never more results than rows.
    let k = k.min(codes.len() / query.len());
    if k == 0 {
        return Vec::new();
    }
    let mut top = TopK::new(k, max_distance, tie_key);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU supports popcnt, checked on the line above; the function has no
            // other precondition.
            unsafe { scan_popcnt(codes, query, &mut top) };
            return top.finish();
        }
    }
    scan_portable(codes, query, &mut top);
    top.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(codes: &[u64], query: &[u64], k: usize, max_distance: u32) -> Vec<Neighbor> {
        let mut all: Vec<(u32, usize)> = codes
            .chunks_exact(query.len())
            .enumerate()
            .map(|(row, c)| (hamming(c, query), row))
            .filter(|(d, _)| *d <= max_distance)
            .collect();
        all.sort();
        all.truncate(k);
        all.into_iter()
            .map(|(distance, row)| Neighbor { distance, row })
            .collect()
    }

    #[test]
    fn hamming_counts_differing_bits() {
        assert_eq!(hamming(&[0, 0], &[0, 0]), 0);
        assert_eq!(hamming(&[u64::MAX], &[0]), 64);
        assert_eq!(hamming(&[0b1011, 1 << 63], &[0b0001, 0]), 3);
    }

    #[test]
    fn empty_matrix_gives_nothing() {
        assert!(top_k(&[], &[1, 2, 3, 4], 5, u32::MAX, |r| r as u64).is_empty());
    }

    #[test]
    fn k_zero_gives_nothing() {
        assert!(top_k(&[1, 2], &[1, 2], 0, u32::MAX, |r| r as u64).is_empty());
    }

    #[test]
    fn ties_follow_the_tie_key() {
        // Three identical rows: the tie key decides the order, not the row position.
        let codes = [7u64, 7, 7];
        let got = top_k(&codes, &[7], 3, u32::MAX, |r| [30, 10, 20][r]);
        let rows: Vec<usize> = got.iter().map(|n| n.row).collect();
        assert_eq!(rows, vec![1, 2, 0]);
    }

    proptest! {
        #[test]
        fn matches_reference(
            words in prop::sample::select(vec![1usize, 2, 3, 4, 5, 8, 16, 17, 64]),
            rows in 0usize..200,
            k in 1usize..12,
            max_distance in prop::option::of(0u32..300),
            seed in any::<u64>(),
        ) {
            // Few distinct bits per word so that ties and radius edges are common.
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state & 0x0F0F };
            let codes: Vec<u64> = (0..rows * words).map(|_| next()).collect();
            let query: Vec<u64> = (0..words).map(|_| next()).collect();
            let max_distance = max_distance.unwrap_or(u32::MAX);
            let got = top_k(&codes, &query, k, max_distance, |r| r as u64);
            prop_assert_eq!(got, reference(&codes, &query, k, max_distance));
        }
    }
}
