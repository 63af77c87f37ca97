//! Hamming-distance scan kernels over a dense, row-major code matrix.
//!
//! A code is `words` little-endian `u64` words; `codes` holds `n` codes back to back. The scan
//! keeps the `k` best rows within `max_distance`, ordered by `(distance, tie_key(row))`, so
//! results are deterministic whatever the storage order.
//!
//! Kernels ([`Kernel`]) are picked once per process from the CPU's features, never from the
//! build target, so one wheel built for the x86_64 baseline runs the best code each CPU has:
//! AVX-512 VPOPCNTDQ (eight 256-bit codes per step), AVX2 (six per step: four by nibble-lookup
//! popcount, two by scalar `popcnt`), the `popcnt` instruction one code at a time, or portable Rust (any architecture,
//! aarch64 included). The SIMD kernels are specialised for 256-bit codes; other lengths run the
//! one-code-at-a-time loop, itself specialised for 64/128/256/512/1024 bits. Every kernel
//! reports the same rows as the portable one (tests run all that the CPU supports).

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
/// when `k` is as large as the index. `tie_key(row)` is `None` for a row that must not be
/// reported (a free slot), checked only for rows that beat the bound.
struct TopK<F: Fn(usize) -> Option<u64>> {
    k: usize,
    /// Largest distance that can still enter the result: `max_distance` until the heap is
    /// full, then the distance of its worst item.
    bound: u32,
    tie_key: F,
    /// The tie keys ascend with the row, so once `k` rows at distance 0 are held no later row
    /// can enter and the scan may stop.
    keys_follow_rows: bool,
    // (distance, tie key, row); the worst item on top.
    heap: BinaryHeap<(u32, u64, usize)>,
}

impl<F: Fn(usize) -> Option<u64>> TopK<F> {
    fn new(k: usize, max_distance: u32, tie_key: F, keys_follow_rows: bool) -> Self {
        Self { k, bound: max_distance, tie_key, keys_follow_rows, heap: BinaryHeap::with_capacity(k.min(64)) }
    }

    #[inline(always)]
    fn offer(&mut self, distance: u32, row: usize) {
        if distance > self.bound {
            return;
        }
        // Only rows at or under the bound reach here, so the tie key lookup stays off the
        // hot path of a scan that mostly misses.
        let Some(key) = (self.tie_key)(row) else {
            return;
        };
        let item = (distance, key, row);
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
        self.heap.into_sorted_vec().into_iter().map(|(distance, _, row)| Neighbor { distance, row }).collect()
    }
}

/// What a kernel reports to: the largest distance still worth reporting, and the rows at or
/// under it. Kernels compute distances several rows at a time and call `offer` only for rows
/// whose distance is at most `bound()` when the group was compared, so `offer` re-checks.
trait Sink {
    fn bound(&self) -> u32;
    fn offer(&mut self, distance: u32, row: usize);
    /// Whether no row after the last one offered can change the result (checked after offers).
    fn done(&self) -> bool;
}

impl<F: Fn(usize) -> Option<u64>> Sink for TopK<F> {
    /// With keys that follow rows and a full heap, a later row at the bound's distance loses
    /// the tie to every row held, so only rows strictly under it are worth offering.
    #[inline(always)]
    fn bound(&self) -> u32 {
        if self.keys_follow_rows && self.heap.len() == self.k {
            self.bound.saturating_sub(1)
        } else {
            self.bound
        }
    }

    #[inline(always)]
    fn offer(&mut self, distance: u32, row: usize) {
        TopK::offer(self, distance, row)
    }

    #[inline(always)]
    fn done(&self) -> bool {
        self.keys_follow_rows && self.bound == 0 && self.heap.len() == self.k
    }
}

/// The distance kernel a scan uses, picked once per process from the CPU's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 with VPOPCNTDQ: eight 256-bit codes per step (x86_64).
    Avx512,
    /// AVX2 with a nibble-lookup popcount (`vpshufb` + `vpsadbw`) for four 256-bit codes and
    /// the scalar `popcnt` for two more, per step.
    Avx2,
    /// One code at a time with the `popcnt` instruction (x86_64).
    Popcnt,
    /// One code at a time in portable Rust (`u64::count_ones`); every other architecture.
    Portable,
}

impl Kernel {
    /// The best kernel this CPU supports.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            // The SIMD kernels also run the `popcnt` loop for other code lengths and tails.
            let popcnt = std::arch::is_x86_feature_detected!("popcnt");
            if popcnt
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
            {
                return Kernel::Avx512;
            }
            if popcnt && std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
            if std::arch::is_x86_feature_detected!("popcnt") {
                return Kernel::Popcnt;
            }
        }
        Kernel::Portable
    }

    /// The kernels this CPU can run, best first (tests run each against the portable one).
    pub fn available() -> Vec<Kernel> {
        let best = Kernel::detect();
        [Kernel::Avx512, Kernel::Avx2, Kernel::Popcnt, Kernel::Portable]
            .into_iter()
            .skip_while(|k| *k != best)
            .filter(|k| k.supported())
            .collect()
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                std::arch::is_x86_feature_detected!("popcnt")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("popcnt") && std::arch::is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Popcnt => std::arch::is_x86_feature_detected!("popcnt"),
            Kernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512-vpopcntdq",
            Kernel::Avx2 => "avx2",
            Kernel::Popcnt => "popcnt",
            Kernel::Portable => "portable",
        }
    }
}

/// The kernel picked for this process (once): the best this CPU supports, or the one named by
/// the `BSC_KERNEL` environment variable (`avx512-vpopcntdq`, `avx2`, `popcnt`, `portable`)
/// when this CPU supports it, so benchmarks and tests can run a lesser kernel on a better CPU.
pub fn active_kernel() -> Kernel {
    static ACTIVE: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let wanted = std::env::var("BSC_KERNEL").ok();
        let named = [Kernel::Avx512, Kernel::Avx2, Kernel::Popcnt, Kernel::Portable]
            .into_iter()
            .find(|k| wanted.as_deref() == Some(k.name()) && k.supported());
        named.unwrap_or_else(Kernel::detect)
    })
}

/// Rows per block of the one-code-at-a-time loop: a block's smallest distance is found first,
/// with nothing else in the loop, and only a block that holds a row within the bound is gone
/// through again row by row (rare once the bound has settled).
const SCALAR_BLOCK: usize = 16;

#[inline(always)]
fn scan_fixed<const W: usize, S: Sink>(codes: &[u64], query: &[u64], first_row: usize, top: &mut S) {
    let q: &[u64; W] = query.try_into().expect("query length equals W");
    let distance = |code: &[u64]| -> u32 {
        let mut d = 0u32;
        for w in 0..W {
            d += (code[w] ^ q[w]).count_ones();
        }
        d
    };
    let mut blocks = codes.chunks_exact(W * SCALAR_BLOCK);
    let mut first = first_row;
    for block in &mut blocks {
        let nearest = block.chunks_exact(W).map(distance).min().unwrap_or(u32::MAX);
        if nearest <= top.bound() && offer_rows(block, W, first, top, distance) {
            return;
        }
        first += SCALAR_BLOCK;
    }
    offer_rows(blocks.remainder(), W, first, top, distance);
}

/// Offers the rows of `codes` (numbered from `first`) in order, each whose distance is within
/// the bound; returns whether the scan may stop.
#[inline(always)]
fn offer_rows<S: Sink>(
    codes: &[u64], words: usize, first: usize, top: &mut S, distance: impl Fn(&[u64]) -> u32,
) -> bool {
    for (i, code) in codes.chunks_exact(words).enumerate() {
        let d = distance(code);
        if d <= top.bound() {
            top.offer(d, first + i);
            if top.done() {
                return true;
            }
        }
    }
    false
}

#[inline(always)]
fn scan_dyn<S: Sink>(codes: &[u64], query: &[u64], first_row: usize, top: &mut S) {
    for (row, chunk) in codes.chunks_exact(query.len()).enumerate() {
        let d = hamming(chunk, query);
        if d <= top.bound() {
            top.offer(d, first_row + row);
            if top.done() {
                return;
            }
        }
    }
}

#[inline(always)]
fn scan_portable<S: Sink>(codes: &[u64], query: &[u64], first_row: usize, top: &mut S) {
    match query.len() {
        1 => scan_fixed::<1, S>(codes, query, first_row, top),
        2 => scan_fixed::<2, S>(codes, query, first_row, top),
        4 => scan_fixed::<4, S>(codes, query, first_row, top),
        8 => scan_fixed::<8, S>(codes, query, first_row, top),
        16 => scan_fixed::<16, S>(codes, query, first_row, top),
        _ => scan_dyn(codes, query, first_row, top),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86_64 kernels. Each is a `#[target_feature]` function: the caller must have checked
    //! that the CPU has the features (see `Kernel::supported`). The only other `unsafe` is
    //! unaligned loads and stores, whose bounds are stated at each use.

    use super::{scan_portable, Sink};
    use std::arch::x86_64::*;

    /// Offers, in ascending row order, the rows of a group whose lanes are set in `mask` (lane
    /// `i` is row `first + i` at distance `lanes[i]`); returns whether the scan may stop. Every
    /// kernel offers rows in ascending order, which the tie rule and `TopK::bound` rely on.
    /// Out of line and cold: most groups offer nothing, and keeping this path out of the loop
    /// leaves the loop's values in registers.
    #[cold]
    #[inline(never)]
    fn offer_group<S: Sink>(top: &mut S, lanes: &[u32], mut mask: u32, first: usize) -> bool {
        while mask != 0 {
            let lane = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if lanes[lane] <= top.bound() {
                top.offer(lanes[lane], first + lane);
            }
        }
        top.done()
    }

    #[target_feature(enable = "popcnt")]
    pub(super) fn scan_popcnt<S: Sink>(codes: &[u64], query: &[u64], first_row: usize, top: &mut S) {
        scan_portable(codes, query, first_row, top)
    }

    /// 256-bit codes (4 words), eight per step: XOR with the query, VPOPCNTQ, then a reduction
    /// of each code's four word counts, and one compare of all eight against the bound.
    #[target_feature(enable = "avx512f,avx512vl,avx512vpopcntdq,popcnt")]
    pub(super) fn scan_w4_avx512<S: Sink>(codes: &[u64], query: &[u64], first_row: usize, top: &mut S) {
        debug_assert_eq!(query.len(), 4);
        let rows = codes.len() / 4;
        let (q0, q1, q2, q3) = (query[0] as i64, query[1] as i64, query[2] as i64, query[3] as i64);
        let q = _mm512_set_epi64(q3, q2, q1, q0, q3, q2, q1, q0);
        // The bound only changes when a row is offered, so it lives in a register between offers.
        let mut limit = _mm256_set1_epi32(top.bound() as i32);
        let mut row = 0;
        while row + 8 <= rows {
            // SAFETY: row + 8 <= rows, so words row*4 .. row*4 + 32 lie inside `codes`; the four
            // 64-byte loads read exactly those words, and `loadu` needs no alignment.
            let (a, b, c, d) = unsafe {
                let p = codes.as_ptr().add(row * 4) as *const __m512i;
                (
                    _mm512_loadu_si512(p),
                    _mm512_loadu_si512(p.add(1)),
                    _mm512_loadu_si512(p.add(2)),
                    _mm512_loadu_si512(p.add(3)),
                )
            };
            // Per-word popcounts: a holds rows 0 (lanes 0-3) and 1 (lanes 4-7), b rows 2 and 3, ...
            let a = _mm512_popcnt_epi64(_mm512_xor_si512(a, q));
            let b = _mm512_popcnt_epi64(_mm512_xor_si512(b, q));
            let c = _mm512_popcnt_epi64(_mm512_xor_si512(c, q));
            let d = _mm512_popcnt_epi64(_mm512_xor_si512(d, q));
            // Pairwise sums of adjacent words: [a01, b01, a23, b23, a45, b45, a67, b67].
            let ab = _mm512_add_epi64(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
            let cd = _mm512_add_epi64(_mm512_unpacklo_epi64(c, d), _mm512_unpackhi_epi64(c, d));
            // Add the two halves of each code: 128-bit chunks (0, 2) plus (1, 3) of ab and cd.
            let x = _mm512_shuffle_i64x2::<0x88>(ab, cd);
            let y = _mm512_shuffle_i64x2::<0xDD>(ab, cd);
            // The sums come out as rows 0, 2, 1, 3, 4, 6, 5, 7; put them back in row order so that
            // rows are offered in ascending order (a tie must go to the lower row, and once the
            // top-k is full `bound()` admits only rows strictly better than the worst held).
            let sums = _mm512_permutexvar_epi64(_mm512_set_epi64(7, 5, 6, 4, 3, 1, 2, 0), _mm512_add_epi64(x, y));
            let dist = _mm512_cvtepi64_epi32(sums);
            let mask = _mm256_cmple_epu32_mask(dist, limit);
            if mask != 0 {
                let mut lanes = [0u32; 8];
                // SAFETY: `lanes` is 32 bytes, the size of the store; `storeu` needs no alignment.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, dist) };
                if offer_group(top, &lanes, u32::from(mask), first_row + row) {
                    return;
                }
                limit = _mm256_set1_epi32(top.bound() as i32);
            }
            row += 8;
        }
        scan_portable(&codes[row * 4..], query, first_row + row, top);
    }

    /// Per-64-bit-lane popcount of a 256-bit vector: nibble lookup with `vpshufb`, then the
    /// byte counts summed per lane with `vpsadbw`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn popcount_lanes(v: __m256i) -> __m256i {
        let table = _mm256_setr_epi8(
            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
        );
        let low = _mm256_set1_epi8(0x0f);
        let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
        let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(v), low));
        _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256())
    }

    /// Four codes' distances as `u64` lanes, in row order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn four_distances(r0: __m256i, r1: __m256i, r2: __m256i, r3: __m256i, q: __m256i) -> __m256i {
        let r0 = popcount_lanes(_mm256_xor_si256(r0, q));
        let r1 = popcount_lanes(_mm256_xor_si256(r1, q));
        let r2 = popcount_lanes(_mm256_xor_si256(r2, q));
        let r3 = popcount_lanes(_mm256_xor_si256(r3, q));
        // [r0 w01, r1 w01, r0 w23, r1 w23] and the same for rows 2, 3.
        let t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(r0, r1), _mm256_unpackhi_epi64(r0, r1));
        let t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(r2, r3), _mm256_unpackhi_epi64(r2, r3));
        _mm256_add_epi64(_mm256_permute2x128_si256::<0x20>(t01, t23), _mm256_permute2x128_si256::<0x31>(t01, t23))
    }

    /// 256-bit codes (4 words), six per step: four with AVX2 (nibble-lookup popcount) and two
    /// with the scalar `popcnt` instruction. The two run on different execution ports, so the
    /// mix beats either alone (the AVX2 roofline variants in benchmarks/roofline.c: 4:2 is the
    /// fastest of AVX2 alone, popcnt alone and the mix).
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) fn scan_w4_avx2<S: Sink>(codes: &[u64], query: &[u64], first_row: usize, top: &mut S) {
        debug_assert_eq!(query.len(), 4);
        // Eight steps of six codes per block: the block's smallest distances are kept with
        // nothing else in the loop, and only a block holding a row within the bound is offered
        // row by row (see `offer_block`).
        const STEPS: usize = 8;
        const ROWS: usize = 6 * STEPS;
        let rows = codes.len() / 4;
        // SAFETY: `query` holds 4 words (32 bytes), the size of the load.
        let q = unsafe { _mm256_loadu_si256(query.as_ptr() as *const __m256i) };
        let (q0, q1, q2, q3) = (query[0], query[1], query[2], query[3]);
        let mut bound = top.bound();
        let mut limit = _mm256_set1_epi64x(i64::from(bound));
        let mut row = 0;
        while row + ROWS <= rows {
            let mut nearest = _mm256_set1_epi64x(i64::from(u32::MAX));
            let mut scalar = u32::MAX;
            for step in 0..STEPS {
                let at = row + step * 6;
                // SAFETY: at + 6 <= row + ROWS <= rows, so words at*4 .. at*4 + 24 lie inside
                // `codes`; the four 32-byte loads read the first four codes of them.
                let (r0, r1, r2, r3) = unsafe {
                    let p = codes.as_ptr().add(at * 4) as *const __m256i;
                    (
                        _mm256_loadu_si256(p),
                        _mm256_loadu_si256(p.add(1)),
                        _mm256_loadu_si256(p.add(2)),
                        _mm256_loadu_si256(p.add(3)),
                    )
                };
                // Distances are below 2^32, so the unsigned 32-bit minimum of the u64 lanes is
                // their minimum (the high halves stay 0).
                nearest = _mm256_min_epu32(nearest, four_distances(r0, r1, r2, r3, q));
                let c = &codes[at * 4 + 16..at * 4 + 24];
                let e = scalar_popcnt(c[0] ^ q0)
                    + scalar_popcnt(c[1] ^ q1)
                    + scalar_popcnt(c[2] ^ q2)
                    + scalar_popcnt(c[3] ^ q3);
                let f = scalar_popcnt(c[4] ^ q0)
                    + scalar_popcnt(c[5] ^ q1)
                    + scalar_popcnt(c[6] ^ q2)
                    + scalar_popcnt(c[7] ^ q3);
                scalar = scalar.min(e).min(f);
            }
            let over = _mm256_cmpgt_epi64(nearest, limit);
            if _mm256_movemask_pd(_mm256_castsi256_pd(over)) != 0xF || scalar <= bound {
                if offer_block(top, &codes[row * 4..(row + ROWS) * 4], query, first_row + row) {
                    return;
                }
                bound = top.bound();
                limit = _mm256_set1_epi64x(i64::from(bound));
            }
            row += ROWS;
        }
        scan_portable(&codes[row * 4..], query, first_row + row, top);
    }

    /// The `popcnt` instruction on one word, written as `asm!` so the compiler cannot turn the
    /// two scalar codes of a step into more vector work (it does, with `count_ones`: the nibble
    /// lookup then runs for six codes a step and the scalar port idles).
    #[inline(always)]
    fn scalar_popcnt(x: u64) -> u32 {
        let count: u64;
        // SAFETY: `popcnt` reads one register and writes another; the kernels that call this
        // are compiled for (and only run on) CPUs with `popcnt`.
        unsafe {
            std::arch::asm!("popcnt {0}, {1}", out(reg) count, in(reg) x, options(pure, nomem, nostack));
        }
        count as u32
    }

    /// Offers a block's rows within the bound, in order; returns whether the scan may stop.
    /// Out of line and cold, as `offer_group`.
    #[cold]
    #[inline(never)]
    #[target_feature(enable = "popcnt")]
    fn offer_block<S: Sink>(top: &mut S, codes: &[u64], query: &[u64], first: usize) -> bool {
        super::offer_rows(codes, 4, first, top, |c| super::hamming(c, query))
    }
}

/// Runs `kernel` over `codes`, reporting rows (numbered from `first_row`) to `top`.
fn scan_with<S: Sink>(kernel: Kernel, codes: &[u64], query: &[u64], first_row: usize, top: &mut S) {
    assert!(kernel.supported(), "kernel {} is not supported by this CPU", kernel.name());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked the CPU features the kernel is compiled for.
        Kernel::Avx512 if query.len() == 4 => unsafe { x86::scan_w4_avx512(codes, query, first_row, top) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above: `supported()` checked avx2 and popcnt.
        Kernel::Avx2 if query.len() == 4 => unsafe { x86::scan_w4_avx2(codes, query, first_row, top) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked popcnt for each of these kernels; for code lengths other
        // than 256 bits the SIMD kernels run this loop.
        Kernel::Avx512 | Kernel::Avx2 | Kernel::Popcnt => unsafe { x86::scan_popcnt(codes, query, first_row, top) },
        _ => scan_portable(codes, query, first_row, top),
    }
}

/// The estimated time of a flat scan over `rows` codes of `words` words, in nanoseconds: about
/// 0.4 ns a 256-bit code while the codes fit the caches, 1.2 ns once they stream from memory
/// (measured at 100k, 1M and 10M: docs/PERFORMANCE.md).
pub fn flat_nanos(rows: usize, words: usize) -> f64 {
    let per_word = if rows * words * 8 < 8 << 20 { 0.1 } else { 0.3 };
    1_000.0 + rows as f64 * words as f64 * per_word
}

/// Scans `codes` (rows of `query.len()` words) and returns up to `k` rows with distance at most
/// `max_distance`, sorted by distance, ties broken by `tie_key(row)` ascending; rows whose
/// `tie_key` is `None` are skipped. When `keys_follow_rows` (the tie key grows with the row),
/// the scan stops as soon as it holds `k` rows at distance 0.
///
/// # Panics
/// If `query` is empty or `codes.len()` is not a multiple of `query.len()`: callers validate
/// shapes before they get here.
pub fn top_k<F: Fn(usize) -> Option<u64>>(
    codes: &[u64], query: &[u64], k: usize, max_distance: u32, tie_key: F, keys_follow_rows: bool,
) -> Vec<Neighbor> {
    top_k_with(active_kernel(), codes, query, k, max_distance, tie_key, keys_follow_rows)
}

/// [`top_k`] with a chosen kernel (which must be supported by this CPU).
pub fn top_k_with<F: Fn(usize) -> Option<u64>>(
    kernel: Kernel, codes: &[u64], query: &[u64], k: usize, max_distance: u32, tie_key: F, keys_follow_rows: bool,
) -> Vec<Neighbor> {
    assert!(!query.is_empty(), "query must hold at least one word");
    assert_eq!(codes.len() % query.len(), 0, "codes length is a multiple of the code length");
    // A lying `k` must not size an allocation: there are never more results than rows.
    let k = k.min(codes.len() / query.len());
    if k == 0 {
        return Vec::new();
    }
    let mut top = TopK::new(k, max_distance, tie_key, keys_follow_rows);
    scan_with(kernel, codes, query, 0, &mut top);
    top.finish()
}

/// Rows per block of a batch scan: 2048 codes of 256 bits are 64 KiB, which stay in the L2
/// cache while every query of the batch scans them.
const BATCH_BLOCK_ROWS: usize = 2048;
/// Below this many code comparisons (about 20 ms of one core) a batch runs on the calling
/// thread only. A helper thread whose core is also running something else can be descheduled
/// for a scheduler slice while it holds a block, and the batch waits for it; measured on 2
/// cores with the other one busy, that made 100k codes x 64 queries (6.4M comparisons) 7%
/// slower than one thread, while 1M x 64 was 1.5x faster.
const PARALLEL_MIN_WORK: usize = 1 << 25;

/// [`top_k`] for many queries at once (`queries` holds `m` codes back to back). The codes are
/// cut into blocks; a worker takes the next block, scans it for every query while it is in
/// cache, and keeps a top-k per query; the workers' top-k lists are merged at the end. So the
/// codes are read once per batch whatever the number of threads, and a worker whose core is
/// busy with something else simply takes fewer blocks. `threads` is cut to the CPUs this
/// process may use. Results are exactly those of [`top_k`] for each query, in query order.
// The arguments are those of `top_k` plus the batch's shape and thread count; bundling them
// into a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn top_k_batch<F: Fn(usize) -> Option<u64> + Sync>(
    codes: &[u64], queries: &[u64], words: usize, k: usize, max_distance: u32, threads: usize, tie_key: F,
    keys_follow_rows: bool,
) -> Vec<Vec<Neighbor>> {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let kernel = active_kernel();
    assert!(words > 0 && queries.len().is_multiple_of(words) && codes.len().is_multiple_of(words));
    let m = queries.len() / words;
    let rows = codes.len() / words;
    let k = k.min(rows);
    if k == 0 || m == 0 {
        return vec![Vec::new(); m];
    }
    let blocks = rows.div_ceil(BATCH_BLOCK_ROWS);
    let next_block = AtomicUsize::new(0);
    let work = || {
        let mut tops: Vec<TopK<&F>> = (0..m).map(|_| TopK::new(k, max_distance, &tie_key, keys_follow_rows)).collect();
        // Blocks are handed out in ascending order, so each worker still sees its rows in
        // ascending order and may stop a query early (see `TopK::done`).
        loop {
            let block = next_block.fetch_add(1, Ordering::Relaxed);
            if block >= blocks {
                break tops;
            }
            let start = block * BATCH_BLOCK_ROWS;
            let end = (start + BATCH_BLOCK_ROWS).min(rows);
            let block = &codes[start * words..end * words];
            for (top, q) in tops.iter_mut().zip(queries.chunks_exact(words)) {
                if !top.done() {
                    scan_with(kernel, block, q, start, top);
                }
            }
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.clamp(1, cpus).min(blocks);
    if threads == 1 || rows.saturating_mul(m) < PARALLEL_MIN_WORK {
        return work().into_iter().map(TopK::finish).collect();
    }
    let per_worker: Vec<Vec<TopK<&F>>> = std::thread::scope(|scope| {
        // A helper that cannot be started (a limit on threads) leaves its blocks to the others.
        let helpers: Vec<_> =
            (1..threads).filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok()).collect();
        let mut all = vec![work()];
        all.extend(helpers.into_iter().map(|h| h.join().expect("a batch scan worker panicked")));
        all
    });
    // Merge: per query, the k best (distance, tie key, row) over every worker's list.
    let mut merged: Vec<Vec<(u32, u64, usize)>> = vec![Vec::new(); m];
    for tops in per_worker {
        for (j, top) in tops.into_iter().enumerate() {
            merged[j].extend(top.heap.into_vec());
        }
    }
    merged
        .into_iter()
        .map(|mut items| {
            items.sort_unstable();
            items.truncate(k);
            items.into_iter().map(|(distance, _, row)| Neighbor { distance, row }).collect()
        })
        .collect()
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
        all.into_iter().map(|(distance, row)| Neighbor { distance, row }).collect()
    }

    #[test]
    fn hamming_counts_differing_bits() {
        assert_eq!(hamming(&[0, 0], &[0, 0]), 0);
        assert_eq!(hamming(&[u64::MAX], &[0]), 64);
        assert_eq!(hamming(&[0b1011, 1 << 63], &[0b0001, 0]), 3);
    }

    #[test]
    fn empty_matrix_gives_nothing() {
        assert!(top_k(&[], &[1, 2, 3, 4], 5, u32::MAX, |r| Some(r as u64), true).is_empty());
    }

    #[test]
    fn k_zero_gives_nothing() {
        assert!(top_k(&[1, 2], &[1, 2], 0, u32::MAX, |r| Some(r as u64), true).is_empty());
    }

    #[test]
    fn every_kernel_finds_the_exact_distance_for_every_count() {
        // One row per possible distance 0..=256 (in a shuffled order), for each kernel.
        let query = [0x0123_4567_89ab_cdefu64, 0xfedc_ba98_7654_3210, u64::MAX, 0];
        let mut codes = Vec::new();
        for d in (0..=256u32).rev() {
            let mut row = query;
            for bit in 0..d as usize {
                row[bit / 64] ^= 1 << (bit % 64);
            }
            codes.extend_from_slice(&row);
        }
        for kernel in Kernel::available() {
            let got = top_k_with(kernel, &codes, &query, 257, u32::MAX, |r| Some(r as u64), true);
            let distances: Vec<u32> = got.iter().map(|n| n.distance).collect();
            assert_eq!(distances, (0..=256).collect::<Vec<u32>>(), "kernel {}", kernel.name());
            assert!(got.iter().all(|n| n.row == 256 - n.distance as usize), "kernel {}", kernel.name());
        }
    }

    #[test]
    fn a_scan_stops_at_the_first_k_exact_matches_when_keys_follow_rows() {
        // 10,000 rows, exact matches at rows 100 and 5000: with keys that follow rows, k=1 stops
        // within the group after row 100; with arbitrary keys it must read every row.
        let mut codes = vec![u64::MAX; 10_000 * 4];
        codes[100 * 4..101 * 4].copy_from_slice(&[0, 0, 0, 0]);
        codes[5000 * 4..5001 * 4].copy_from_slice(&[0, 0, 0, 0]);
        for kernel in Kernel::available() {
            let asked = std::cell::Cell::new(0usize);
            let key = |r: usize| {
                asked.set(asked.get().max(r));
                Some(r as u64)
            };
            let got = top_k_with(kernel, &codes, &[0; 4], 1, u32::MAX, key, true);
            assert_eq!(got, vec![Neighbor { distance: 0, row: 100 }], "kernel {}", kernel.name());
            assert!(asked.get() < 200, "kernel {} read on to row {}", kernel.name(), asked.get());
            let two = top_k_with(kernel, &codes, &[0; 4], 2, u32::MAX, |r| Some(r as u64), true);
            assert_eq!(two.iter().map(|n| n.row).collect::<Vec<_>>(), vec![100, 5000]);
            // Reversed keys: the later match wins the tie, so no early stop is allowed.
            let got = top_k_with(kernel, &codes, &[0; 4], 1, u32::MAX, |r| Some(u64::MAX - r as u64), false);
            assert_eq!(got[0].row, 5000, "kernel {}", kernel.name());
        }
    }

    #[test]
    fn ties_above_zero_go_to_the_lower_row_in_every_kernel() {
        // Rows 1 and 2 tie at distance 3; the AVX-512 reduction computes row 2's lane before
        // row 1's, and with a full top-k only strictly better rows are admitted: row 1 must win.
        for (pair, groups) in [((1usize, 2usize), 1usize), ((5, 6), 1), ((9, 10), 2), ((13, 14), 3)] {
            let rows = 8 * groups;
            let mut codes = vec![u64::MAX; rows * 4];
            for r in [pair.0, pair.1] {
                codes[r * 4..r * 4 + 4].copy_from_slice(&[0b111, 0, 0, 0]);
            }
            for kernel in Kernel::available() {
                for radius in [u32::MAX, 3] {
                    let got = top_k_with(kernel, &codes, &[0; 4], 1, radius, |r| Some(r as u64), true);
                    assert_eq!(got, vec![Neighbor { distance: 3, row: pair.0 }], "kernel {}", kernel.name());
                    let two = top_k_with(kernel, &codes, &[0; 4], 2, radius, |r| Some(r as u64), true);
                    assert_eq!(two.iter().map(|n| n.row).collect::<Vec<_>>(), vec![pair.0, pair.1]);
                }
            }
        }
    }

    #[test]
    fn detection_picks_a_supported_kernel() {
        let best = Kernel::detect();
        assert!(best.supported());
        assert_eq!(Kernel::available()[0], best);
        assert!(Kernel::available().contains(&Kernel::Portable));
        assert_eq!(active_kernel(), best);
    }

    #[test]
    fn ties_follow_the_tie_key() {
        // Three identical rows: the tie key decides the order, not the row position.
        let codes = [7u64, 7, 7];
        let got = top_k(&codes, &[7], 3, u32::MAX, |r| Some([30, 10, 20][r]), false);
        let rows: Vec<usize> = got.iter().map(|n| n.row).collect();
        assert_eq!(rows, vec![1, 2, 0]);
    }

    #[test]
    fn batches_match_single_queries_on_one_thread_and_many() {
        let mut state = 7u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state & 0x00FF_00FF_00FF_00FF
        };
        // Enough rows times queries to cross PARALLEL_MIN_WORK, and a block edge.
        let rows = 40_000;
        let m = 900;
        let codes: Vec<u64> = (0..rows * 4).map(|_| next()).collect();
        let queries: Vec<u64> = (0..m * 4).map(|_| next()).collect();
        assert!(rows * m >= PARALLEL_MIN_WORK);
        for threads in [1, 2, 3] {
            for (k, radius) in [(1, u32::MAX), (5, 100), (3, 40)] {
                let got = top_k_batch(&codes, &queries, 4, k, radius, threads, |r| Some(r as u64), true);
                assert_eq!(got.len(), m);
                for (j, q) in queries.chunks_exact(4).enumerate().step_by(37) {
                    assert_eq!(
                        got[j],
                        top_k(&codes, q, k, radius, |r| Some(r as u64), true),
                        "query {j}, threads {threads}"
                    );
                }
            }
        }
        assert!(top_k_batch(&codes, &[], 4, 1, u32::MAX, 2, |r| Some(r as u64), true).is_empty());
    }

    proptest! {
        #[test]
        fn matches_reference(
            words in prop::sample::select(vec![1usize, 2, 3, 4, 5, 8, 16, 17, 64]),
            rows in 0usize..300,
            k in 1usize..12,
            max_distance in prop::option::of(0u32..300),
            seed in any::<u64>(),
        ) {
            // Few distinct bits per word (or, for some seeds, all 64) so that ties and radius edges
            // are common and the full range of counts is covered.
            let mut state = seed | 1;
            let mask = if seed % 3 == 0 { u64::MAX } else { 0x0F0F };
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state & mask };
            let codes: Vec<u64> = (0..rows * words).map(|_| next()).collect();
            let query: Vec<u64> = (0..words).map(|_| next()).collect();
            let max_distance = max_distance.unwrap_or(u32::MAX);
            let want = reference(&codes, &query, k, max_distance);
            for kernel in Kernel::available() {
                let got = top_k_with(kernel, &codes, &query, k, max_distance, |r| Some(r as u64), true);
                prop_assert_eq!(&got, &want, "kernel {}", kernel.name());
            }
        }
    }
}
