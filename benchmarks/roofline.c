/* The roofline for a k=1 Hamming scan over 256-bit codes: the distance of every code to the query
 * and a running minimum, with nothing else (no ids, no heap, no Python objects). AVX-512
 * VPOPCNTDQ when the CPU has it, else the scalar popcnt instruction. The benchmark runner
 * compiles it with `cc -O3 -shared -fPIC` and calls it through ctypes, so it pays the same kind
 * of call overhead as a call into bsc_native. */
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
