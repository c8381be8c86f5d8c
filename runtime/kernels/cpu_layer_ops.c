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
 * out[t] = weight * (h[t] / sqrt(mean(h[t]^2) + eps)), h = x (+ residual, stored in sum_out).
 * Strides are in elements; sum_out and residual may be NULL (no residual add).
 */
void rms_norm_f32(float *out, float *sum_out, const float *x, const float *residual,
                  const float *weight, int64_t rows, int64_t width, int64_t x_stride,
                  int64_t residual_stride, int64_t sum_stride, int64_t out_stride, float eps) {
    float row[width];
    for (int64_t t = 0; t < rows; ++t) {
        const float *source = x + t * x_stride;
        for (int64_t i = 0; i < width; ++i)
            row[i] = residual ? residual[t * residual_stride + i] + source[i] : source[i];
        if (sum_out)
            for (int64_t i = 0; i < width; ++i) sum_out[t * sum_stride + i] = row[i];
        float scale = 1.0f / sqrtf(mean_square_f32(row, width) + eps);
        for (int64_t i = 0; i < width; ++i) {
            float normed = row[i] * scale;
            out[t * out_stride + i] = weight[i] * normed;
        }
    }
}

void rms_norm_bf16(bf16_t *out, bf16_t *sum_out, const bf16_t *x, const bf16_t *residual,
                   const bf16_t *weight, int64_t rows, int64_t width, int64_t x_stride,
                   int64_t residual_stride, int64_t sum_stride, int64_t out_stride, float eps) {
    float row[width];
    for (int64_t t = 0; t < rows; ++t) {
        const bf16_t *source = x + t * x_stride;
        for (int64_t i = 0; i < width; ++i) {
            float value = bf16_load(source[i]);
            if (residual) value = bf16_load(bf16_round(bf16_load(residual[t * residual_stride + i]) + value));
            row[i] = value;
        }
        if (sum_out)
            for (int64_t i = 0; i < width; ++i) sum_out[t * sum_stride + i] = bf16_round(row[i]);
        float scale = 1.0f / sqrtf(mean_square_f32(row, width) + eps);
        for (int64_t i = 0; i < width; ++i) {
            float normed = bf16_load(bf16_round(row[i] * scale));
            out[t * out_stride + i] = bf16_round(bf16_load(weight[i]) * normed);
        }
    }
}

/*
 * In place over heads [T, heads, D] (row stride `row_stride`, heads contiguous):
 * x = x * cos + rotate_half(x) * sin, cos/sin [T, D] contiguous, rotate_half(x) = (-x2, x1).
 */
void rotary_f32(float *x, const float *cos_table, const float *sin_table, int64_t rows,
                int64_t heads, int64_t head_dim, int64_t row_stride) {
    int64_t half = head_dim / 2;
    for (int64_t t = 0; t < rows; ++t) {
        const float *c = cos_table + t * head_dim, *s = sin_table + t * head_dim;
        for (int64_t h = 0; h < heads; ++h) {
            float *v = x + t * row_stride + h * head_dim;
            for (int64_t i = 0; i < half; ++i) {
                float first = v[i], second = v[i + half];
                float a0 = first * c[i], b0 = -second * s[i];
                float a1 = second * c[i + half], b1 = first * s[i + half];
                v[i] = a0 + b0;
                v[i + half] = a1 + b1;
            }
        }
    }
}

void rotary_bf16(bf16_t *x, const bf16_t *cos_table, const bf16_t *sin_table, int64_t rows,
                 int64_t heads, int64_t head_dim, int64_t row_stride) {
    int64_t half = head_dim / 2;
    for (int64_t t = 0; t < rows; ++t) {
        const bf16_t *c = cos_table + t * head_dim, *s = sin_table + t * head_dim;
        for (int64_t h = 0; h < heads; ++h) {
            bf16_t *v = x + t * row_stride + h * head_dim;
            for (int64_t i = 0; i < half; ++i) {
                float first = bf16_load(v[i]), second = bf16_load(v[i + half]);
                float a0 = bf16_load(bf16_round(first * bf16_load(c[i])));
                float b0 = bf16_load(bf16_round(-second * bf16_load(s[i])));
                float a1 = bf16_load(bf16_round(second * bf16_load(c[i + half])));
                float b1 = bf16_load(bf16_round(first * bf16_load(s[i + half])));
                v[i] = bf16_round(a0 + b0);
                v[i + half] = bf16_round(a1 + b1);
            }
        }
    }
}
