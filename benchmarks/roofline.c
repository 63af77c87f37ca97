/* The roofline for a k=1 Hamming scan over 256-bit codes: the distance of every code to the query
 * and a running minimum, with nothing else (no ids, no heap, no Python objects). One variant per
 * instruction set, so each of bsc's kernels is compared with the best hand-written loop for its
 * ISA: AVX-512 VPOPCNTDQ; AVX2 alone (nibble lookup with vpshufb, four codes a step); the scalar
 * popcnt instruction; and AVX2 mixed with scalar popcnt (four codes by vpshufb and two by popcnt
 * a step, so both the vector and the scalar ports work). The benchmark runner compiles it with
 * `cc -O3 -shared -fPIC` and calls it through ctypes, so it pays the same kind of call overhead
 * as a call into bsc_native. */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

__attribute__((target("avx512f,avx512vl,avx512vpopcntdq"))) static uint32_t min_avx512(const uint64_t *codes, size_t n,
                                                                                       const uint64_t *q) {
    const __m512i qv = _mm512_set_epi64(q[3], q[2], q[1], q[0], q[3], q[2], q[1], q[0]);
    __m256i best = _mm256_set1_epi32(-1);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m512i *p = (const __m512i *)(codes + i * 4);
        __m512i a = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p), qv));
        __m512i b = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 1), qv));
        __m512i c = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 2), qv));
        __m512i d = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 3), qv));
        __m512i ab = _mm512_add_epi64(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
        __m512i cd = _mm512_add_epi64(_mm512_unpacklo_epi64(c, d), _mm512_unpackhi_epi64(c, d));
        __m512i s = _mm512_add_epi64(_mm512_shuffle_i64x2(ab, cd, 0x88), _mm512_shuffle_i64x2(ab, cd, 0xDD));
        best = _mm256_min_epu32(best, _mm512_cvtepi64_epi32(s));
    }
    uint32_t lanes[8], m = UINT32_MAX;
    _mm256_storeu_si256((__m256i *)lanes, best);
    for (int j = 0; j < 8; j++) m = lanes[j] < m ? lanes[j] : m;
    for (; i < n; i++) {
        uint32_t dd = 0;
        for (int w = 0; w < 4; w++) dd += (uint32_t)__builtin_popcountll(codes[i * 4 + w] ^ q[w]);
        m = dd < m ? dd : m;
    }
    return m;
}

__attribute__((target("popcnt"))) static uint32_t min_scalar(const uint64_t *codes, size_t n, const uint64_t *q) {
    uint32_t m = UINT32_MAX;
    for (size_t i = 0; i < n; i++) {
        const uint64_t *c = codes + i * 4;
        uint32_t dd = (uint32_t)(__builtin_popcountll(c[0] ^ q[0]) + __builtin_popcountll(c[1] ^ q[1]) +
                                 __builtin_popcountll(c[2] ^ q[2]) + __builtin_popcountll(c[3] ^ q[3]));
        m = dd < m ? dd : m;
    }
    return m;
}

__attribute__((target("avx2"))) static inline __m256i popcount_lanes(__m256i v) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                           2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
    __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
}

/* Four codes' distances as u64 lanes (rows 0..3). */
__attribute__((target("avx2"))) static inline __m256i four_avx2(const uint64_t *c, __m256i qv) {
    const __m256i *p = (const __m256i *)c;
    __m256i r0 = popcount_lanes(_mm256_xor_si256(_mm256_loadu_si256(p), qv));
    __m256i r1 = popcount_lanes(_mm256_xor_si256(_mm256_loadu_si256(p + 1), qv));
    __m256i r2 = popcount_lanes(_mm256_xor_si256(_mm256_loadu_si256(p + 2), qv));
    __m256i r3 = popcount_lanes(_mm256_xor_si256(_mm256_loadu_si256(p + 3), qv));
    __m256i t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(r0, r1), _mm256_unpackhi_epi64(r0, r1));
    __m256i t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(r2, r3), _mm256_unpackhi_epi64(r2, r3));
    return _mm256_add_epi64(_mm256_permute2x128_si256(t01, t23, 0x20), _mm256_permute2x128_si256(t01, t23, 0x31));
}

__attribute__((target("avx2"))) static inline uint32_t min_lanes(__m256i best) {
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, best);
    uint32_t m = UINT32_MAX;
    for (int j = 0; j < 4; j++) m = lanes[j] < m ? (uint32_t)lanes[j] : m;
    return m;
}

__attribute__((target("avx2,popcnt"))) static uint32_t min_avx2(const uint64_t *codes, size_t n, const uint64_t *q) {
    const __m256i qv = _mm256_loadu_si256((const __m256i *)q);
    __m256i best = _mm256_set1_epi64x(INT64_MAX);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256i d = four_avx2(codes + i * 4, qv);
        best = _mm256_blendv_epi8(best, d, _mm256_cmpgt_epi64(best, d));
    }
    uint32_t m = min_lanes(best);
    uint32_t rest = i < n ? min_scalar(codes + i * 4, n - i, q) : UINT32_MAX;
    return rest < m ? rest : m;
}

__attribute__((target("avx2,popcnt"))) static uint32_t min_avx2_popcnt(const uint64_t *codes, size_t n,
                                                                        const uint64_t *q) {
    const __m256i qv = _mm256_loadu_si256((const __m256i *)q);
    __m256i best = _mm256_set1_epi64x(INT64_MAX);
    uint32_t m = UINT32_MAX;
    size_t i = 0;
    for (; i + 6 <= n; i += 6) {
        __m256i d = four_avx2(codes + i * 4, qv);
        best = _mm256_blendv_epi8(best, d, _mm256_cmpgt_epi64(best, d));
        const uint64_t *c = codes + (i + 4) * 4;
        uint32_t e = (uint32_t)(__builtin_popcountll(c[0] ^ q[0]) + __builtin_popcountll(c[1] ^ q[1]) +
                                __builtin_popcountll(c[2] ^ q[2]) + __builtin_popcountll(c[3] ^ q[3]));
        uint32_t f = (uint32_t)(__builtin_popcountll(c[4] ^ q[0]) + __builtin_popcountll(c[5] ^ q[1]) +
                                __builtin_popcountll(c[6] ^ q[2]) + __builtin_popcountll(c[7] ^ q[3]));
        e = e < f ? e : f;
        m = e < m ? e : m;
    }
    uint32_t v = min_lanes(best);
    m = v < m ? v : m;
    uint32_t rest = i < n ? min_scalar(codes + i * 4, n - i, q) : UINT32_MAX;
    return rest < m ? rest : m;
}

/* The smallest distance with one variant: 0 AVX-512, 1 AVX2, 2 popcnt, 3 AVX2 + popcnt; returns
 * UINT32_MAX when this CPU lacks the variant's instructions. */
uint32_t roofline_variant(const uint64_t *codes, size_t n, const uint64_t *q, int variant) {
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
    switch (variant) {
        case 0:
            return __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx512vl")
                       ? min_avx512(codes, n, q)
                       : UINT32_MAX;
        case 1:
            return avx2 ? min_avx2(codes, n, q) : UINT32_MAX;
        case 2:
            return __builtin_cpu_supports("popcnt") ? min_scalar(codes, n, q) : UINT32_MAX;
        case 3:
            return avx2 ? min_avx2_popcnt(codes, n, q) : UINT32_MAX;
        default:
            return UINT32_MAX;
    }
}

/* 1 when the AVX-512 path runs on this CPU, else 0. */
int roofline_kernel(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx512vl");
}

/* The smallest Hamming distance from q (4 words) to any of the n codes (4 words each). */
uint32_t roofline_min(const uint64_t *codes, size_t n, const uint64_t *q) {
    static int avx512 = -1;
    if (avx512 < 0) avx512 = roofline_kernel();
    return avx512 ? min_avx512(codes, n, q) : min_scalar(codes, n, q);
}
