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
 * Head sizes that are a multiple of 16 take the vector path: a key or value row is loaded
 * once as 16-lane vectors for every query head of its group, each score is one tree sum
 * of a vector (a sequential sum of 16 lanes is a 64-cycle dependency chain), the running
 * maximum is kept as scores are made, and the exponentials run over whole rows (vectorized
 * where the C library has vector math). 64 and 128 are compiled as constants. Other head
 * sizes take the scalar loops.
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
#include "cpu_kernels.h"

#define LOAD_F32(value) (value)
#define STORE_F32(value) (value)

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

#define MAX_CHUNKS 16 /* the vector path's largest head: 16 vectors of 16 lanes */

/* row[p] = exp(row[p] - shift) for p < length; returns their sum. */
static inline float exp_shifted(float *row, int64_t length, float shift) {
    float total = 0.0f;
    _Pragma("omp simd reduction(+ : total)")
    for (int64_t p = 0; p < length; ++p) total += (row[p] = expf(row[p] - shift));
    return total;
}

/* Bytes of a task's scratch, a multiple of 64: the scaled queries and the accumulators
 * [group, dim], then the scores [group, length], their maxima and their sums [group]. */
static inline size_t vector_scratch_bytes(int64_t group, int64_t length, int64_t dim) {
    return (sizeof(float) * (size_t)(2 * group * dim + group * length + 2 * group) + 63) / 64 * 64;
}

/* One task on the vector path; `dim` is a constant where the caller's switch inlines it. */
#define VECTOR_TASK(T, SUFFIX)                                                              \
static inline __attribute__((always_inline)) void vector_task_##SUFFIX(                    \
        T *out, const T *query, const T *key_cache, const T *value_cache,                   \
        const int64_t *tables, const int64_t *lengths, const decode_shape_t *sh,            \
        int64_t task, int64_t dim, v16 *restrict scratch) {                                 \
    const int64_t hkv = sh->num_kv_heads, group = sh->num_heads / hkv;                      \
    const int64_t bs = sh->block_size, chunks = dim / 16, row_stride = hkv * dim;           \
    const int64_t seq = task / hkv, kv = task % hkv, length = lengths[seq];                 \
    const int64_t *table = tables + seq * sh->table_width;                                  \
    v16 *restrict q = scratch, *restrict acc = q + group * chunks;                          \
    float *restrict scores = (float *)(acc + group * chunks);                               \
    float *restrict top = scores + group * length, *restrict total = top + group;           \
    for (int64_t h = 0; h < group; ++h) {                                                   \
        const T *q_in = query + seq * sh->q_row + (kv * group + h) * dim;                   \
        top[h] = -INFINITY;                                                                 \
        for (int64_t c = 0; c < chunks; ++c) {                                              \
            q[h * chunks + c] = load16_##SUFFIX(q_in + 16 * c) * sh->scale;                 \
            acc[h * chunks + c] = (v16){0};                                                 \
        }                                                                                   \
    }                                                                                       \
    for (int64_t start = 0; start < length; start += bs) {                                  \
        const T *block = key_cache + (table[start / bs] * bs * hkv + kv) * dim;             \
        const int64_t stop = length - start < bs ? length - start : bs;                     \
        for (int64_t j = 0; j < stop; ++j) {                                                \
            v16 key[MAX_CHUNKS];                                                            \
            for (int64_t c = 0; c < chunks; ++c)                                            \
                key[c] = load16_##SUFFIX(block + j * row_stride + 16 * c);                  \
            for (int64_t h = 0; h < group; ++h) {                                           \
                v16 dot = q[h * chunks] * key[0];                                           \
                for (int64_t c = 1; c < chunks; ++c) dot += q[h * chunks + c] * key[c];     \
                const float score = sum16(dot);                                             \
                scores[h * length + start + j] = score;                                     \
                top[h] = score > top[h] ? score : top[h];                                   \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    for (int64_t h = 0; h < group; ++h)                                                     \
        total[h] = exp_shifted(scores + h * length, length, top[h]);                        \
    for (int64_t start = 0; start < length; start += bs) {                                  \
        const T *block = value_cache + (table[start / bs] * bs * hkv + kv) * dim;           \
        const int64_t stop = length - start < bs ? length - start : bs;                     \
        for (int64_t j = 0; j < stop; ++j) {                                                \
            v16 value[MAX_CHUNKS];                                                          \
            for (int64_t c = 0; c < chunks; ++c)                                            \
                value[c] = load16_##SUFFIX(block + j * row_stride + 16 * c);                \
            for (int64_t h = 0; h < group; ++h) {                                           \
                const float weight = scores[h * length + start + j];                        \
                for (int64_t c = 0; c < chunks; ++c) acc[h * chunks + c] += weight * value[c]; \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    for (int64_t h = 0; h < group; ++h) {                                                   \
        T *out_h = out + seq * sh->out_row + (kv * group + h) * dim;                        \
        const float inverse = 1.0f / total[h];                                              \
        for (int64_t c = 0; c < chunks; ++c)                                                \
            store16_##SUFFIX(out_h + 16 * c, acc[h * chunks + c] * inverse);                \
    }                                                                                       \
}

VECTOR_TASK(float, f32)
VECTOR_TASK(bf16_t, bf16)

/* Every task on the vector path; 0, or -2 if a task's scratch could not be allocated. */
#define VECTOR_DECODE(SUFFIX)                                                               \
    const int64_t group = sh->num_heads / sh->num_kv_heads, dim = sh->head_dim;             \
    const int64_t tasks = sh->num_seqs * sh->num_kv_heads;                                  \
    int failed = 0;                                                                         \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (num_threads > 1)") \
    for (int64_t task = 0; task < tasks; ++task) {                                          \
        v16 *scratch = aligned_alloc(64, vector_scratch_bytes(                              \
            group, lengths[task / sh->num_kv_heads], dim));                                 \
        if (scratch == NULL) {                                                              \
            _Pragma("omp atomic write")                                                     \
            failed = 1;                                                                     \
            continue;                                                                       \
        }                                                                                   \
        const int64_t *t = tables, *l = lengths;                                            \
        switch (dim) {                                                                      \
        case 64: vector_task_##SUFFIX(out, query, key_cache, value_cache, t, l, sh, task, 64, scratch); break; \
        case 128: vector_task_##SUFFIX(out, query, key_cache, value_cache, t, l, sh, task, 128, scratch); break; \
        default: vector_task_##SUFFIX(out, query, key_cache, value_cache, t, l, sh, task, dim, scratch); \
        }                                                                                   \
        free(scratch);                                                                      \
    }                                                                                       \
    return failed ? -2 : 0;

static inline int takes_vector_path(const decode_shape_t *sh) {
    return sh->head_dim % 16 == 0 && sh->head_dim <= 16 * MAX_CHUNKS;
}

int paged_decode_f32(float *out, const float *query, const float *key_cache,
                     const float *value_cache, const int64_t *tables, const int64_t *lengths,
                     const decode_shape_t *sh, int num_threads) {
    if (sh->num_kv_heads <= 0 || sh->num_heads % sh->num_kv_heads) return -1;
    if (takes_vector_path(sh)) {
        VECTOR_DECODE(f32)
    }
    DECODE(float, LOAD_F32, STORE_F32)
    return 0;
}
HAS_TYPE(paged_decode_f32, paged_decode_f32_fn);

int paged_decode_bf16(bf16_t *out, const bf16_t *query, const bf16_t *key_cache,
                      const bf16_t *value_cache, const int64_t *tables, const int64_t *lengths,
                      const decode_shape_t *sh, int num_threads) {
    if (sh->num_kv_heads <= 0 || sh->num_heads % sh->num_kv_heads) return -1;
    if (takes_vector_path(sh)) {
        VECTOR_DECODE(bf16)
    }
    DECODE(bf16_t, bf16_load, bf16_round)
    return 0;
}
