/*
 * The small per-layer ops of a decoder on the CPU, one call each instead of 6-12 torch ops:
 * RMSNorm (optionally after the residual add) and the rotary embedding of query and key in
 * place. Each rounds where Hugging Face Llama's torch forms round: products and sums in fp32,
 * a bf16 result rounded to nearest even at every step the torch form stores a bf16 tensor.
 * No fused multiply-add: each product is rounded before the sum, as torch's elementwise ops do.
 */
#pragma GCC optimize("fp-contract=off")

#include <math.h>
#include <stdint.h>

#include "cpu_bf16.h"
#include "cpu_kernels.h"

/* one row: sum of squares in fp32, in the order of a 16-lane vector reduction */
static float mean_square_f32(const float *row, int64_t width) {
    float lanes[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= width; i += 16)
        for (int lane = 0; lane < 16; ++lane) lanes[lane] += row[i + lane] * row[i + lane];
    float total = 0.0f;
    for (int lane = 0; lane < 16; ++lane) total += lanes[lane];
    for (; i < width; ++i) total += row[i] * row[i];
    return total / (float)width;
}

/*
 * Each op is written once for both storage types: LOAD widens an element to fp32, STORE
 * narrows an fp32 value into storage, so LOAD(STORE(v)) is v as the torch form keeps an
 * intermediate tensor (rounded to the storage type; for fp32, v itself).
 */
#define F32_LOAD(v) (v)
#define F32_STORE(v) (v)
#define BF16_LOAD(v) bf16_load(v)
#define BF16_STORE(v) bf16_round(v)

/*
 * out[t] = weight * (h[t] / sqrt(mean(h[t]^2) + eps)), h = x (+ residual, stored in sum_out).
 * Strides are in elements; sum_out and residual may be NULL (no residual add).
 */
#define RMS_NORM(NAME, T, LOAD, STORE)                                                       \
    void NAME(T *out, T *sum_out, const T *x, const T *residual, const T *weight,           \
              int64_t rows, int64_t width, int64_t x_stride, int64_t residual_stride,       \
              int64_t sum_stride, int64_t out_stride, float eps) {                          \
        float row[width];                                                                    \
        for (int64_t t = 0; t < rows; ++t) {                                                 \
            const T *source = x + t * x_stride;                                              \
            for (int64_t i = 0; i < width; ++i) {                                            \
                float value = LOAD(source[i]);                                               \
                if (residual)                                                                \
                    value = LOAD(STORE(LOAD(residual[t * residual_stride + i]) + value));    \
                row[i] = value;                                                              \
            }                                                                                \
            if (sum_out)                                                                     \
                for (int64_t i = 0; i < width; ++i) sum_out[t * sum_stride + i] = STORE(row[i]); \
            float scale = 1.0f / sqrtf(mean_square_f32(row, width) + eps);                   \
            for (int64_t i = 0; i < width; ++i) {                                            \
                float normed = LOAD(STORE(row[i] * scale));                                  \
                out[t * out_stride + i] = STORE(LOAD(weight[i]) * normed);                   \
            }                                                                                \
        }                                                                                    \
    }

/*
 * In place over heads [T, heads, D] (row stride `row_stride`, heads contiguous):
 * x = x * cos + rotate_half(x) * sin, cos/sin [T, D] contiguous, rotate_half(x) = (-x2, x1).
 */
#define ROTARY(NAME, T, LOAD, STORE)                                                         \
    void NAME(T *x, const T *cos_table, const T *sin_table, int64_t rows, int64_t heads,    \
              int64_t head_dim, int64_t row_stride) {                                        \
        int64_t half = head_dim / 2;                                                         \
        for (int64_t t = 0; t < rows; ++t) {                                                 \
            const T *c = cos_table + t * head_dim, *s = sin_table + t * head_dim;           \
            for (int64_t h = 0; h < heads; ++h) {                                            \
                T *v = x + t * row_stride + h * head_dim;                                    \
                for (int64_t i = 0; i < half; ++i) {                                         \
                    float first = LOAD(v[i]), second = LOAD(v[i + half]);                    \
                    float a0 = LOAD(STORE(first * LOAD(c[i])));                              \
                    float b0 = LOAD(STORE(-second * LOAD(s[i])));                            \
                    float a1 = LOAD(STORE(second * LOAD(c[i + half])));                      \
                    float b1 = LOAD(STORE(first * LOAD(s[i + half])));                       \
                    v[i] = STORE(a0 + b0);                                                   \
                    v[i + half] = STORE(a1 + b1);                                            \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }

RMS_NORM(rms_norm_f32, float, F32_LOAD, F32_STORE)
RMS_NORM(rms_norm_bf16, bf16_t, BF16_LOAD, BF16_STORE)
ROTARY(rotary_f32, float, F32_LOAD, F32_STORE)
ROTARY(rotary_bf16, bf16_t, BF16_LOAD, BF16_STORE)
HAS_TYPE(rms_norm_f32, rms_norm_f32_fn);
HAS_TYPE(rotary_f32, rotary_f32_fn);
