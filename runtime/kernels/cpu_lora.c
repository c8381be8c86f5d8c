/*
 * The LoRA of a decode batch on a CPU, one call per projection group.
 *
 * Each work item is one adapter slot and the few batch rows that use it. For each
 * slice s (q|k|v, gate|up or one projection), the item's rows are shrunk by the slot's
 * A[s, :rank] (rank dot products over d_in per row) and the result expanded by the
 * slot's B[:rank, slice columns] (rank row-axpys per row), added to y. Each row of A and
 * B is read once per item, at the slot's own rank, while the item's rows stay in L1;
 * arithmetic is fp32 whatever the storage type, and y is rounded once.
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

#define MAX_ROWS 16      /* rows per item (callers send decode items only) */
#define MAX_SLICES 4
#define COLUMN_BLOCK 512 /* output columns accumulated at once, per row */
#define PREFETCH_ROWS 4  /* rows of A or B requested from memory ahead of their use */

/* Ask for `bytes` at `start` to be brought into L2 (into L1 as well measured slower): a
 * slot's block of A or B is a short stream (a few KB) that the hardware prefetchers pick up
 * too late on their own. */
static inline void prefetch_bytes(const void *start, int64_t bytes) {
    const char *p = (const char *)start;
    for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset, 0, 1);
}

/* Rows k+PREFETCH_ROWS ahead of a block of `rows` rows `stride` elements apart; at k == 0
 * also the block's first PREFETCH_ROWS rows. */
#define PREFETCH_AHEAD(T, block, k, rows, stride, width)                                  \
    do {                                                                                  \
        if ((k) == 0)                                                                     \
            for (int64_t ahead = 0; ahead < PREFETCH_ROWS && ahead < (rows); ++ahead)     \
                prefetch_bytes((block) + ahead * (stride), (width) * (int64_t)sizeof(T)); \
        if ((k) + PREFETCH_ROWS < (rows))                                                 \
            prefetch_bytes((block) + ((k) + PREFETCH_ROWS) * (stride),                    \
                           (width) * (int64_t)sizeof(T));                                 \
    } while (0)

typedef struct {
    int64_t d_in, d_out, n_slices;
    const int64_t *slice_offsets; /* n_slices + 1 */
    int64_t x_row, y_row;
    int64_t a_slot, a_slice, a_rank;
    int64_t b_slot, b_rank;
} shape_t;

/* v[j][s][k] = x[row j] . A[slot, s, k] for k < rank; xf holds the rows as fp32. Rows go
 * in pairs, so each element of A is loaded (and widened) once per two rows. */
#define SHRINK(T, LOAD)                                                                   \
    for (int64_t s = 0; s < sh->n_slices; ++s) {                                          \
        for (int64_t k = 0; k < rank; ++k) {                                              \
            const T *a_block = a + slot * sh->a_slot + s * sh->a_slice;                   \
            const T *a_row = a_block + k * sh->a_rank;                                    \
            PREFETCH_AHEAD(T, a_block, k, rank, sh->a_rank, sh->d_in);                    \
            int64_t j = 0;                                                                \
            for (; j + 1 < m; j += 2) {                                                   \
                const float *x0 = xf + j * sh->d_in, *x1 = x0 + sh->d_in;                 \
                float acc0 = 0.0f, acc1 = 0.0f;                                           \
                _Pragma("omp simd reduction(+ : acc0, acc1)")                             \
                for (int64_t i = 0; i < sh->d_in; ++i) {                                  \
                    const float value = LOAD(a_row[i]);                                   \
                    acc0 += x0[i] * value;                                                \
                    acc1 += x1[i] * value;                                                \
                }                                                                         \
                v[(j * MAX_SLICES + s) * rank + k] = acc0;                                \
                v[((j + 1) * MAX_SLICES + s) * rank + k] = acc1;                          \
            }                                                                             \
            if (j < m) {                                                                  \
                const float *x0 = xf + j * sh->d_in;                                      \
                float acc0 = 0.0f;                                                        \
                _Pragma("omp simd reduction(+ : acc0)")                                   \
                for (int64_t i = 0; i < sh->d_in; ++i) acc0 += x0[i] * LOAD(a_row[i]);    \
                v[(j * MAX_SLICES + s) * rank + k] = acc0;                                \
            }                                                                             \
        }                                                                                 \
    }

/* y[row j, slice s] += v[j][s][:rank] @ B[slot, :rank, slice s], COLUMN_BLOCK columns at
 * a time, rows in pairs as in SHRINK. */
#define EXPAND(T, LOAD, STORE_ADD)                                                        \
    for (int64_t s = 0; s < sh->n_slices; ++s) {                                          \
        for (int64_t lo = sh->slice_offsets[s]; lo < sh->slice_offsets[s + 1];            \
             lo += COLUMN_BLOCK) {                                                        \
            int64_t width = sh->slice_offsets[s + 1] - lo;                                \
            if (width > COLUMN_BLOCK) width = COLUMN_BLOCK;                               \
            memset(acc, 0, sizeof(float) * (size_t)(m * COLUMN_BLOCK));                  \
            for (int64_t k = 0; k < rank; ++k) {                                          \
                const T *b_block = b + slot * sh->b_slot + lo;                            \
                const T *b_row = b_block + k * sh->b_rank;                                \
                PREFETCH_AHEAD(T, b_block, k, rank, sh->b_rank, width);                   \
                int64_t j = 0;                                                            \
                for (; j + 1 < m; j += 2) {                                               \
                    const float coef0 = v[(j * MAX_SLICES + s) * rank + k];               \
                    const float coef1 = v[((j + 1) * MAX_SLICES + s) * rank + k];         \
                    float *out0 = acc + j * COLUMN_BLOCK, *out1 = out0 + COLUMN_BLOCK;    \
                    _Pragma("omp simd")                                                   \
                    for (int64_t c = 0; c < width; ++c) {                                 \
                        const float value = LOAD(b_row[c]);                               \
                        out0[c] += coef0 * value;                                         \
                        out1[c] += coef1 * value;                                         \
                    }                                                                     \
                }                                                                         \
                if (j < m) {                                                              \
                    const float coef0 = v[(j * MAX_SLICES + s) * rank + k];               \
                    float *out0 = acc + j * COLUMN_BLOCK;                                 \
                    _Pragma("omp simd")                                                   \
                    for (int64_t c = 0; c < width; ++c) out0[c] += coef0 * LOAD(b_row[c]); \
                }                                                                         \
            }                                                                             \
            for (int64_t j = 0; j < m; ++j) {                                             \
                T *y_row = y + rows[start + j] * sh->y_row + lo;                          \
                const float *out = acc + j * COLUMN_BLOCK;                                \
                _Pragma("omp simd")                                                       \
                for (int64_t c = 0; c < width; ++c) STORE_ADD(y_row[c], out[c]);          \
            }                                                                             \
        }                                                                                 \
    }

#define LOAD_F32(value) (value)
#define ADD_F32(target, delta) ((target) += (delta))
#define ADD_BF16(target, delta) ((target) = bf16_round(bf16_load(target) + (delta)))

#define ITEM_LOOP(T, LOAD, STORE_ADD, TO_F32)                                             \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (num_threads > 1)") \
    for (int64_t item = 0; item < num_items; ++item) {                                    \
        const int64_t slot = item_slot[item], rank = item_rank[item];                     \
        const int64_t start = item_start[item], m = item_count[item];                     \
        float *xf = malloc(sizeof(float) * (size_t)(m * sh->d_in));                       \
        float *v = malloc(sizeof(float) * (size_t)(m * MAX_SLICES * rank));               \
        float *acc = malloc(sizeof(float) * (size_t)(m * COLUMN_BLOCK));                  \
        for (int64_t j = 0; j < m; ++j) {                                                 \
            const T *x_row = x + rows[start + j] * sh->x_row;                             \
            for (int64_t i = 0; i < sh->d_in; ++i) xf[j * sh->d_in + i] = TO_F32(x_row[i]); \
        }                                                                                 \
        SHRINK(T, LOAD)                                                                   \
        EXPAND(T, LOAD, STORE_ADD)                                                        \
        free(xf);                                                                         \
        free(v);                                                                          \
        free(acc);                                                                        \
    }

/* 0, or why the items cannot run: -1 more slices than MAX_SLICES, -2 an item with more
 * rows than MAX_ROWS (the callers' checks make both unreachable). */
static int refused(const shape_t *sh, int64_t num_items, const int64_t *item_count) {
    if (sh->n_slices > MAX_SLICES) return -1;
    for (int64_t item = 0; item < num_items; ++item)
        if (item_count[item] > MAX_ROWS) return -2;
    return 0;
}

#define ENTRY_POINT(NAME, T, LOAD, STORE_ADD)                                             \
    int NAME(T *y, const T *x, const T *a, const T *b, const shape_t *sh,                 \
             int64_t num_items, const int64_t *item_slot, const int64_t *item_rank,       \
             const int64_t *item_start, const int64_t *item_count, const int64_t *rows,   \
             int num_threads) {                                                           \
        const int status = refused(sh, num_items, item_count);                            \
        if (status != 0) return status;                                                   \
        ITEM_LOOP(T, LOAD, STORE_ADD, LOAD)                                               \
        return 0;                                                                         \
    }

ENTRY_POINT(lora_items_f32, float, LOAD_F32, ADD_F32)
ENTRY_POINT(lora_items_bf16, bf16_t, bf16_load, ADD_BF16)
