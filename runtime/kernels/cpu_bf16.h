/*
 * bf16 <-> fp32 for the CPU kernels: widening is exact (the bf16 bits are the top half of
 * the fp32 ones); narrowing rounds to nearest even and keeps NaN a NaN.
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

#endif
