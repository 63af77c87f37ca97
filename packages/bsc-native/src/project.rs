//! Sign random projection in the engine: one embedding to one packed code without Python
//! temporaries, for the query path (`bsc_encoder.BinaryEncoder` is the reference: same matrix,
//! same bit order).
//!
//! Bit `j` of a code is 1 when the embedding's dot product with row `j` of the projection is
//! positive; bits are packed least-significant first into `u64` words. The products are taken
//! in `f32` over the embedding scaled by its largest magnitude (so a huge finite input cannot
//! overflow), where numpy takes them in `f64`: a bit whose product lies within float rounding
//! of zero may come out the other way. Over 100k real-like vectors that is a few bits in a
//! million (tests/test_projector.py counts them).
//!
//! The matrix is kept in blocks of [`LANES`] outputs: for each block, `dim` rows of `LANES`
//! weights, so a block's dot products are `dim` multiply-adds of one contiguous row into
//! `LANES` accumulators that stay in registers (four AVX-512 or eight AVX2 registers), and
//! the whole matrix (384 x 256 floats: 384 KiB) is read once per embedding from L2.

use crate::error::{Error, Result};

/// Outputs per block: one 64-bit word of the code.
const LANES: usize = 64;

#[derive(Clone, Debug)]
pub struct Projector {
    dim: usize,
    bits: usize,
    /// `bits / LANES` blocks of `dim` rows of `LANES` weights.
    blocks: Vec<f32>,
}

/// Why an embedding cannot be encoded (the binding maps these to `TypeError`/`ValueError`
/// with the reference encoder's messages).
#[derive(Clone, Debug, PartialEq)]
pub enum Unfit {
    NotFinite,
    AllZero,
}

impl Projector {
    /// A projector from a row-major `(bits, dim)` matrix.
    pub fn new(matrix: &[f64], bits: usize, dim: usize) -> Result<Self> {
        if bits == 0 || !bits.is_multiple_of(LANES) || dim == 0 || matrix.len() != bits * dim {
            return Err(Error::InvalidArgument(format!(
                "the projection must have shape (code_bits, dim) with code_bits a positive multiple of 64, got {} values for ({bits}, {dim})",
                matrix.len()
            )));
        }
        if !matrix.iter().all(|w| w.is_finite()) {
            return Err(Error::InvalidArgument("the projection holds NaN or infinite values".into()));
        }
        let mut blocks = vec![0f32; bits * dim];
        for block in 0..bits / LANES {
            for d in 0..dim {
                for lane in 0..LANES {
                    blocks[(block * dim + d) * LANES + lane] = matrix[(block * LANES + lane) * dim + d] as f32;
                }
            }
        }
        Ok(Self { dim, bits, blocks })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Encodes `x` (`dim` values, `f32` or `f64`) into `out` (`bits / 64` words).
    pub fn encode<T: Copy + Into<f64>>(&self, x: &[T], out: &mut [u64]) -> std::result::Result<(), Unfit> {
        debug_assert_eq!(x.len(), self.dim);
        debug_assert_eq!(out.len(), self.bits / 64);
        let mut largest = 0f64;
        for &v in x {
            let v: f64 = v.into();
            if !v.is_finite() {
                return Err(Unfit::NotFinite);
            }
            largest = largest.max(v.abs());
        }
        if largest == 0.0 {
            return Err(Unfit::AllZero);
        }
        let mut scaled = [0f32; 4096];
        let scaled = if self.dim <= scaled.len() { &mut scaled[..self.dim] } else { &mut vec![0f32; self.dim][..] };
        for (s, &v) in scaled.iter_mut().zip(x) {
            *s = (v.into() / largest) as f32;
        }
        project(&self.blocks, scaled, out);
        Ok(())
    }
}

fn project(blocks: &[f32], x: &[f32], out: &mut [u64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { project_avx512(blocks, x, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { project_avx2(blocks, x, out) };
        }
    }
    project_with(blocks, x, out, |acc, xd, w| acc + xd * w);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn project_avx512(blocks: &[f32], x: &[f32], out: &mut [u64]) {
    project_with(blocks, x, out, |acc, xd, w| xd.mul_add(w, acc));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn project_avx2(blocks: &[f32], x: &[f32], out: &mut [u64]) {
    project_with(blocks, x, out, |acc, xd, w| xd.mul_add(w, acc));
}

/// The projection, written for the compiler to vectorise: per block, `LANES` accumulators
/// updated by one contiguous row per input value.
#[inline(always)]
fn project_with(blocks: &[f32], x: &[f32], out: &mut [u64], fma: impl Fn(f32, f32, f32) -> f32) {
    let dim = x.len();
    for (word, block) in out.iter_mut().zip(blocks.chunks_exact(dim * LANES)) {
        let mut acc = [0f32; LANES];
        for (row, &xd) in block.chunks_exact(LANES).zip(x) {
            for (a, &w) in acc.iter_mut().zip(row) {
                *a = fma(*a, xd, w);
            }
        }
        let mut bits = 0u64;
        for (lane, &a) in acc.iter().enumerate() {
            bits |= u64::from(a > 0.0) << lane;
        }
        *word = bits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(matrix: &[f64], bits: usize, x: &[f64]) -> Vec<u64> {
        let dim = x.len();
        let largest = x.iter().fold(0f64, |m, v| m.max(v.abs()));
        let mut out = vec![0u64; bits / 64];
        for j in 0..bits {
            let dot: f64 = (0..dim).map(|d| x[d] / largest * matrix[j * dim + d]).sum();
            if dot > 0.0 {
                out[j / 64] |= 1 << (j % 64);
            }
        }
        out
    }

    #[test]
    fn matches_a_float64_reference_but_for_rare_bits() {
        let (bits, dim) = (256, 384);
        let mut s = 17u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let matrix: Vec<f64> = (0..bits * dim).map(|_| next()).collect();
        let p = Projector::new(&matrix, bits, dim).unwrap();
        let mut flipped = 0;
        for _ in 0..300 {
            let x: Vec<f64> = (0..dim).map(|_| next()).collect();
            let mut got = vec![0u64; 4];
            p.encode(&x, &mut got).unwrap();
            let want = reference(&matrix, bits, &x);
            flipped += got.iter().zip(&want).map(|(a, b)| (a ^ b).count_ones()).sum::<u32>();
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let mut got32 = vec![0u64; 4];
            p.encode(&x32, &mut got32).unwrap();
            flipped += got32.iter().zip(&want).map(|(a, b)| (a ^ b).count_ones()).sum::<u32>();
        }
        assert!(flipped <= 5, "{flipped} of {} bits flipped", 600 * bits);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Projector::new(&[0.0; 10], 64, 2).is_err());
        assert!(Projector::new(&[f64::NAN; 128], 64, 2).is_err());
        let p = Projector::new(&[1.0; 128], 64, 2).unwrap();
        let mut out = [0u64];
        assert_eq!(p.encode(&[0.0f64, 0.0], &mut out), Err(Unfit::AllZero));
        assert_eq!(p.encode(&[f64::INFINITY, 0.0], &mut out), Err(Unfit::NotFinite));
        assert_eq!(p.encode(&[f32::NAN, 1.0], &mut out), Err(Unfit::NotFinite));
        // Huge finite values do not overflow.
        p.encode(&[1e300f64, 1e300], &mut out).unwrap();
        assert_eq!(out[0], u64::MAX);
        p.encode(&[-3.0f32, 1.0], &mut out).unwrap();
        assert_eq!(out[0], 0);
    }
}
