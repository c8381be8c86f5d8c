/*
 * bf16 <-> fp32 for the CPU kernels, one value or sixteen at a time: widening is exact (the
 * bf16 bits are the top half of the fp32 ones); narrowing rounds to nearest even and keeps
 * NaN a NaN.
 */
#ifndef LORAPLEX_CPU_BF16_H
#define LORAPLEX_CPU_BF16_H

#include <stdint.h>
#include <string.h>

typedef uint16_t bf16_t;

static inline float bf16_load(bf16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline bf16_t bf16_round(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((bits >> 16) | 0x40u); /* NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u); /* round to nearest even */
    return (bf16_t)(bits >> 16);
}

/* Sixteen lanes of fp32, and loads of 16 values as fp32 from either storage type (unaligned
 * addresses; the kernels' rows need not start on 64 bytes). */
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef uint16_t bf16x16u __attribute__((vector_size(32), aligned(2), may_alias));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

static inline v16 load16_f32(const float *p) { return *(const v16u *)p; }

static inline v16 load16_bf16(const bf16_t *p) {
    return (v16)(__builtin_convertvector(*(const bf16x16u *)p, u32x16) << 16);
}

/* Half and quarter vectors (sum16), and stores of 16 values in either storage type. */
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

static inline void store16_f32(float *p, v16 v) { *(v16u *)p = v; }

static inline void store16_bf16(bf16_t *p, v16 v) {
    for (int i = 0; i < 16; ++i) p[i] = bf16_round(v[i]);
}

/* The sum of the 16 lanes as a tree of halves. */
static inline float sum16(v16 v) {
    v8 s8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)
            + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
    s4 += __builtin_shufflevector(s4, s4, 2, 3, 0, 1);
    s4 += __builtin_shufflevector(s4, s4, 1, 0, 3, 2);
    return s4[0];
}

#endif
