/*
 * The LoRA of a decode batch on a CPU, one call per projection group.
 *
 * Each work item is one adapter slot and a few of the batch rows that use it (`cpu_lora.py`
 * splits a slot's rows into items of at most 8, so they can spread over threads). For each
 * slice s (q|k|v, gate|up or one projection), the item's rows are shrunk by the slot's
 * A[s, :rank] (rank dot products over d_in per row) and the result expanded by the
 * slot's B[:rank, slice columns] (rank row-axpys per row), added to y. Each row of A and
 * B is read once per item, at the slot's own rank, while the item's rows stay in L1;
 * arithmetic is fp32 whatever the storage type, and y is rounded once.
 *
 * A slot's block of A (or B) is read as STREAMS interleaved sequential streams: a pass
 * takes rows k, k + span, k + 2 span, ... (span = rank / STREAMS, rounded up), so each
 * stream walks `span` consecutive rows of the block. With few rows a pass is bound by how
 * many lines memory has in flight, not by its multiply-adds: four rows of one block at a
 * time read 20 GB/s here (2 cores) against the linears' 27-29; eight streams read 24-25.
 *
 * Built at run time by `cpu_lora.py` with the machine's own vector instructions and
 * OpenMP (torch's own runtime, so both share one thread pool).
 *
 * Layouts (element strides; the innermost dimension of each is contiguous):
 *   x [T, d_in], y [T, d_out];
 *   A [S, n_slices, R, d_in]: row k of slot g, slice s at a + g*a_slot + s*a_slice + k*a_rank;
 *   B rank-major [S, R, d_out]: row k of slot g at b + g*b_slot + k*b_rank;
 *   rows [sum of counts]: batch rows grouped by item; item i owns
 *   rows[item_start[i] .. item_start[i] + item_count[i]).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_bf16.h"
#include "cpu_kernels.h"

#define MAX_ROWS 16      /* rows per item (callers send decode items only) */
#define MAX_SLICES 4
#define COLUMN_BLOCK 512 /* output columns a pair of rows accumulates at once */
#define STREAMS 8        /* rows of A or B per pass */

/* A pass's rows of a `rank`-row block, `stride` elements apart: p[q] is row q * span + k,
 * or row k where that is past the rank (its sum is dropped, its coefficient is zero). */
#define PASS_ROWS(T, p, block, k, span, stride)                                          \
    const T *p[STREAMS];                                                                  \
    for (int q = 0; q < STREAMS; ++q)                                                     \
        p[q] = (block) + (q * (span) + (k) < rank ? q * (span) + (k) : (k)) * (stride);

/* v[j][s][k] = x[row j] . A[slot, s, k] for k < rank; xf holds the rows as fp32. A pass
 * meets STREAMS rows of A with two rows of x (sixteen independent sums), each element of A
 * loaded once per two rows. The first pair asks for the next pass's rows: the streams' next
 * rows, or after a slice's last pass the next slice's first ones, or after the last slice
 * the start of B's first pass (short blocks, as at rank 8, otherwise start cold: 10%
 * faster there, 3% over mixed ranks). */
#define SHRINK(T, LOAD, LOAD16)                                                           \
    for (int64_t s = 0; s < sh->n_slices; ++s) {                                          \
        const T *a_block = a + slot * sh->a_slot + s * sh->a_slice;                       \
        for (int64_t k = 0; k < span; ++k) {                                              \
            PASS_ROWS(T, ap, a_block, k, span, sh->a_rank)                                \
            const T *next_block = k + 1 < span ? a_block                                  \
                                  : s + 1 < sh->n_slices ? a_block + sh->a_slice          \
                                                         : b + slot * sh->b_slot;         \
            const int64_t next_stride = k + 1 < span || s + 1 < sh->n_slices              \
                                            ? sh->a_rank : sh->b_rank;                    \
            PASS_ROWS(T, np, next_block, (k + 1 < span ? k + 1 : 0), span, next_stride)   \
            for (int64_t j = 0; j < m; j += 2) {                                          \
                const float *x0 = xf + j * sh->d_in;                                      \
                const float *x1 = j + 1 < m ? x0 + sh->d_in : x0;                         \
                v16 s0[STREAMS], s1[STREAMS];                                             \
                for (int q = 0; q < STREAMS; ++q) s0[q] = s1[q] = (v16){0};               \
                int64_t i = 0;                                                            \
                for (; i + 16 <= sh->d_in; i += 16) {                                     \
                    const v16 u0 = load16_f32(x0 + i), u1 = load16_f32(x1 + i);           \
                    _Pragma("GCC unroll 8")                                               \
                    for (int q = 0; q < STREAMS; ++q) {                                   \
                        if (j == 0) __builtin_prefetch(np[q] + i, 0, 1);                  \
                        const v16 w = LOAD16(ap[q] + i);                                  \
                        s0[q] += u0 * w;                                                  \
                        s1[q] += u1 * w;                                                  \
                    }                                                                     \
                }                                                                         \
                float t0[STREAMS], t1[STREAMS];                                           \
                for (int q = 0; q < STREAMS; ++q) {                                       \
                    t0[q] = sum16(s0[q]);                                                 \
                    t1[q] = sum16(s1[q]);                                                 \
                    for (int64_t tail = i; tail < sh->d_in; ++tail) {                     \
                        t0[q] += x0[tail] * LOAD(ap[q][tail]);                            \
                        t1[q] += x1[tail] * LOAD(ap[q][tail]);                            \
                    }                                                                     \
                }                                                                         \
                for (int q = 0; q < STREAMS && q * span + k < rank; ++q) {                \
                    v[(j * MAX_SLICES + s) * rank + q * span + k] = t0[q];                \
                    if (j + 1 < m) v[((j + 1) * MAX_SLICES + s) * rank + q * span + k] = t1[q]; \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }

/* acc[row j, column c] += v[j][s][:rank] @ B[slot, :rank, c] over all d_out columns (s the
 * slice of column c): a pass takes STREAMS rows of B, COLUMN_BLOCK columns at a time for
 * each pair of rows, and the first pair asks for each stream's next row. */
#define EXPAND(T, LOAD, LOAD16)                                                           \
    for (int64_t k = 0; k < span; ++k) {                                                  \
        PASS_ROWS(T, bp, b + slot * sh->b_slot, k, span, sh->b_rank)                      \
        const int ahead = k + 1 < span;                                                   \
        for (int64_t s = 0; s < sh->n_slices; ++s) {                                      \
            for (int64_t lo = sh->slice_offsets[s]; lo < sh->slice_offsets[s + 1];        \
                 lo += COLUMN_BLOCK) {                                                    \
                int64_t hi = lo + COLUMN_BLOCK;                                           \
                if (hi > sh->slice_offsets[s + 1]) hi = sh->slice_offsets[s + 1];         \
                for (int64_t j = 0; j < m; j += 2) {                                      \
                    float c0[STREAMS], c1[STREAMS];                                       \
                    for (int q = 0; q < STREAMS; ++q) {                                   \
                        const int64_t row = q * span + k;                                 \
                        c0[q] = row < rank ? v[(j * MAX_SLICES + s) * rank + row] : 0.0f; \
                        c1[q] = row < rank && j + 1 < m                                   \
                                    ? v[((j + 1) * MAX_SLICES + s) * rank + row] : 0.0f;  \
                    }                                                                     \
                    float *out0 = acc + j * sh->d_out;                                    \
                    float *out1 = j + 1 < m ? out0 + sh->d_out : acc + m * sh->d_out;     \
                    int64_t c = lo;                                                       \
                    for (; c + 16 <= hi; c += 16) {                                       \
                        v16 d0 = load16_f32(out0 + c), d1 = load16_f32(out1 + c);         \
                        _Pragma("GCC unroll 8")                                           \
                        for (int q = 0; q < STREAMS; ++q) {                               \
                            if (ahead && j == 0)                                          \
                                __builtin_prefetch(bp[q] + sh->b_rank + c, 0, 1);         \
                            const v16 w = LOAD16(bp[q] + c);                              \
                            d0 += c0[q] * w;                                              \
                            d1 += c1[q] * w;                                              \
                        }                                                                 \
                        *(v16u *)(out0 + c) = d0;                                         \
                        *(v16u *)(out1 + c) = d1;                                         \
                    }                                                                     \
                    for (; c < hi; ++c)                                                   \
                        for (int q = 0; q < STREAMS; ++q) {                               \
                            out0[c] += c0[q] * LOAD(bp[q][c]);                            \
                            out1[c] += c1[q] * LOAD(bp[q][c]);                            \
                        }                                                                 \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }

#define LOAD_F32(value) (value)
#define ADD_F32(target, delta) ((target) += (delta))
#define ADD_BF16(target, delta) ((target) = bf16_round(bf16_load(target) + (delta)))

/* acc holds m rows of d_out and one spare row (an odd row count's missing partner). */
#define ITEM_LOOP(T, LOAD, LOAD16, STORE_ADD)                                             \
    const int64_t *rows = work->rows;                                                     \
    const int num_threads = (int)work->num_threads;                                       \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (num_threads > 1)") \
    for (int64_t item = 0; item < work->num_items; ++item) {                              \
        const int64_t slot = work->item_slot[item], rank = work->item_rank[item];         \
        const int64_t start = work->item_start[item], m = work->item_count[item];         \
        const int64_t span = (rank + STREAMS - 1) / STREAMS;                              \
        float *xf = malloc(sizeof(float) * (size_t)(m * sh->d_in));                       \
        float *v = malloc(sizeof(float) * (size_t)(m * MAX_SLICES * rank));               \
        float *acc = calloc((size_t)((m + 1) * sh->d_out), sizeof(float));                \
        for (int64_t j = 0; j < m; ++j) {                                                 \
            const T *x_row = x + rows[start + j] * sh->x_row;                             \
            for (int64_t i = 0; i < sh->d_in; ++i) xf[j * sh->d_in + i] = LOAD(x_row[i]); \
        }                                                                                 \
        SHRINK(T, LOAD, LOAD16)                                                           \
        EXPAND(T, LOAD, LOAD16)                                                           \
        for (int64_t j = 0; j < m; ++j) {                                                 \
            T *y_row = y + rows[start + j] * sh->y_row;                                   \
            const float *out = acc + j * sh->d_out;                                       \
            _Pragma("omp simd")                                                           \
            for (int64_t c = 0; c < sh->d_out; ++c) STORE_ADD(y_row[c], out[c]);          \
        }                                                                                 \
        free(xf);                                                                         \
        free(v);                                                                          \
        free(acc);                                                                        \
    }

/* 0, or why the items cannot run: -1 more slices than MAX_SLICES, -2 an item with more
 * rows than MAX_ROWS (the callers' checks make both unreachable). */
static int refused(const lora_shape_t *sh, const lora_items_t *work) {
    if (sh->n_slices > MAX_SLICES) return -1;
    for (int64_t item = 0; item < work->num_items; ++item)
        if (work->item_count[item] > MAX_ROWS) return -2;
    return 0;
}

#define ENTRY_POINT(NAME, T, LOAD, LOAD16, STORE_ADD)                                     \
    int NAME(T *y, const T *x, const T *a, const T *b, const lora_shape_t *sh,            \
             const lora_items_t *work) {                                                  \
        const int status = refused(sh, work);                                             \
        if (status != 0) return status;                                                   \
        ITEM_LOOP(T, LOAD, LOAD16, STORE_ADD)                                             \
        return 0;                                                                         \
    }

ENTRY_POINT(lora_items_f32, float, LOAD_F32, load16_f32, ADD_F32)
HAS_TYPE(lora_items_f32, lora_items_f32_fn);
ENTRY_POINT(lora_items_bf16, bf16_t, bf16_load, load16_bf16, ADD_BF16)
