/*
 * Decode attention over the paged KV cache on a CPU: one query token per sequence.
 *
 * A task is one (sequence, KV head): the query heads that share the KV head are scored
 * against every key of the sequence, read in place through its block table (nothing is
 * gathered, and no position past the sequence's length is ever read, so stale or
 * non-finite keys of earlier requests cannot leak in), then softmax and the weighted sum
 * of values, all in fp32; the output is rounded once. Tasks are spread over torch's
 * OpenMP threads. Built and loaded by `cpu_native.py`, called by `cpu_attention.py`.
 *
 * Layouts (element strides; head_dim is contiguous everywhere):
 *   query, out [B, H, D] (row stride q_row / out_row, head stride D);
 *   key_cache, value_cache [num_blocks, block_size, Hkv, D], contiguous;
 *   tables [B, W] int64 (row stride W), lengths [B] int64, every length in 1..W*block_size
 *   and every used table entry in 0..num_blocks-1 (checked by the caller).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_bf16.h"

#define LOAD_F32(value) (value)
#define STORE_F32(value) (value)

typedef struct {
    int64_t num_seqs, num_heads, num_kv_heads, head_dim, block_size, table_width;
    int64_t q_row, out_row;
    float scale;
} decode_shape_t;

#define DECODE(T, LOAD, STORE)                                                            \
    const int64_t group = sh->num_heads / sh->num_kv_heads, d = sh->head_dim;             \
    const int64_t tasks = sh->num_seqs * sh->num_kv_heads;                                \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (num_threads > 1)") \
    for (int64_t task = 0; task < tasks; ++task) {                                        \
        const int64_t seq = task / sh->num_kv_heads, kv = task % sh->num_kv_heads;        \
        const int64_t length = lengths[seq];                                              \
        const int64_t *table = tables + seq * sh->table_width;                            \
        float *q = malloc(sizeof(float) * (size_t)(group * d));                           \
        float *scores = malloc(sizeof(float) * (size_t)(group * length));                 \
        float *acc = calloc((size_t)(group * d), sizeof(float));                          \
        for (int64_t h = 0; h < group; ++h) {                                             \
            const T *q_in = query + seq * sh->q_row + (kv * group + h) * d;               \
            for (int64_t i = 0; i < d; ++i) q[h * d + i] = LOAD(q_in[i]) * sh->scale;     \
        }                                                                                 \
        for (int64_t p = 0; p < length; ++p) {                                            \
            const int64_t slot = table[p / sh->block_size] * sh->block_size               \
                                 + p % sh->block_size;                                    \
            const T *key = key_cache + (slot * sh->num_kv_heads + kv) * d;                \
            for (int64_t h = 0; h < group; ++h) {                                         \
                const float *qh = q + h * d;                                              \
                float dot = 0.0f;                                                         \
                _Pragma("omp simd reduction(+ : dot)")                                    \
                for (int64_t i = 0; i < d; ++i) dot += qh[i] * LOAD(key[i]);              \
                scores[h * length + p] = dot;                                             \
            }                                                                             \
        }                                                                                 \
        for (int64_t h = 0; h < group; ++h) {                                             \
            float *row = scores + h * length, top = row[0], total = 0.0f;                 \
            for (int64_t p = 1; p < length; ++p) top = row[p] > top ? row[p] : top;       \
            for (int64_t p = 0; p < length; ++p) total += (row[p] = expf(row[p] - top));  \
            for (int64_t p = 0; p < length; ++p) row[p] /= total;                         \
        }                                                                                 \
        for (int64_t p = 0; p < length; ++p) {                                            \
            const int64_t slot = table[p / sh->block_size] * sh->block_size               \
                                 + p % sh->block_size;                                    \
            const T *value = value_cache + (slot * sh->num_kv_heads + kv) * d;            \
            for (int64_t h = 0; h < group; ++h) {                                         \
                const float weight = scores[h * length + p];                              \
                float *out_h = acc + h * d;                                               \
                _Pragma("omp simd")                                                       \
                for (int64_t i = 0; i < d; ++i) out_h[i] += weight * LOAD(value[i]);      \
            }                                                                             \
        }                                                                                 \
        for (int64_t h = 0; h < group; ++h) {                                             \
            T *out_h = out + seq * sh->out_row + (kv * group + h) * d;                    \
            for (int64_t i = 0; i < d; ++i) out_h[i] = STORE(acc[h * d + i]);             \
        }                                                                                 \
        free(q);                                                                          \
        free(scores);                                                                     \
        free(acc);                                                                        \
    }

int paged_decode_f32(float *out, const float *query, const float *key_cache,
                     const float *value_cache, const int64_t *tables, const int64_t *lengths,
                     const decode_shape_t *sh, int num_threads) {
    if (sh->num_kv_heads <= 0 || sh->num_heads % sh->num_kv_heads) return -1;
    DECODE(float, LOAD_F32, STORE_F32)
    return 0;
}

int paged_decode_bf16(bf16_t *out, const bf16_t *query, const bf16_t *key_cache,
                      const bf16_t *value_cache, const int64_t *tables, const int64_t *lengths,
                      const decode_shape_t *sh, int num_threads) {
    if (sh->num_kv_heads <= 0 || sh->num_heads % sh->num_kv_heads) return -1;
    DECODE(bf16_t, bf16_load, bf16_round)
    return 0;
}
