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
#include "cpu_kernels.h"

#define MAX_ROWS 16      /* rows per item (callers send decode items only) */
#define MAX_SLICES 4
#define COLUMN_BLOCK 512 /* output columns accumulated at once, per row */
#define K_STEP 4         /* rows of A or B per pass */

/* Ask for `bytes` at `start` to be brought into L2 (into L1 as well measured slower): a
 * slot's block of A or B is a short stream (a few KB) that the hardware prefetchers pick up
 * too late on their own. */
static inline void prefetch_bytes(const void *start, int64_t bytes) {
    const char *p = (const char *)start;
    for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset, 0, 1);
}

/* The shape (lora_shape_t) and the step's work items (lora_items_t) are in cpu_kernels.h,
 * which `cpu_decoder.c` reads too. */

/* Rows k..k+3 of a block of `rank` rows `stride` elements apart, as p0..p3 (a row past the
 * rank repeats row k: its coefficient or sum is not used), and rows k+4..k+7 requested from
 * memory, `width` elements each. */
#define ROW_GROUP(T, p, block, k, stride, width)                                          \
    const int64_t k_count = rank - (k) < K_STEP ? rank - (k) : K_STEP;                   \
    const T *p##0 = (block) + (k) * (stride);                                             \
    const T *p##1 = k_count > 1 ? p##0 + (stride) : p##0;                                 \
    const T *p##2 = k_count > 2 ? p##0 + 2 * (stride) : p##0;                             \
    const T *p##3 = k_count > 3 ? p##0 + 3 * (stride) : p##0;                             \
    for (int64_t ahead = 0; ahead < K_STEP; ++ahead)                                      \
        if ((k) + K_STEP + ahead < rank)                                                  \
            prefetch_bytes((block) + ((k) + K_STEP + ahead) * (stride),                   \
                           (width) * (int64_t)sizeof(T));

/* v[j][s][k] = x[row j] . A[slot, s, k] for k < rank; xf holds the rows as fp32. Four rows
 * of A meet two rows of x in one pass: eight independent sums (so the adds do not wait on
 * each other), each element of A loaded (and widened) once per two rows. */
#define SHRINK(T, LOAD)                                                                   \
    for (int64_t s = 0; s < sh->n_slices; ++s) {                                          \
        const T *a_block = a + slot * sh->a_slot + s * sh->a_slice;                       \
        for (int64_t k = 0; k < rank; k += K_STEP) {                                      \
            ROW_GROUP(T, a, a_block, k, sh->a_rank, sh->d_in)                             \
            for (int64_t j = 0; j < m; j += 2) {                                          \
                const float *x0 = xf + j * sh->d_in;                                      \
                const float *x1 = j + 1 < m ? x0 + sh->d_in : x0;                         \
                float s00 = 0.0f, s01 = 0.0f, s02 = 0.0f, s03 = 0.0f;                     \
                float s10 = 0.0f, s11 = 0.0f, s12 = 0.0f, s13 = 0.0f;                     \
                _Pragma("omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13)") \
                for (int64_t i = 0; i < sh->d_in; ++i) {                                  \
                    const float w0 = LOAD(a0[i]), w1 = LOAD(a1[i]);                       \
                    const float w2 = LOAD(a2[i]), w3 = LOAD(a3[i]);                       \
                    s00 += x0[i] * w0; s01 += x0[i] * w1; s02 += x0[i] * w2; s03 += x0[i] * w3; \
                    s10 += x1[i] * w0; s11 += x1[i] * w1; s12 += x1[i] * w2; s13 += x1[i] * w3; \
                }                                                                         \
                const float sums[2][K_STEP] = {{s00, s01, s02, s03}, {s10, s11, s12, s13}}; \
                for (int64_t row = 0; row < 2 && j + row < m; ++row)                      \
                    for (int64_t q = 0; q < k_count; ++q)                                 \
                        v[((j + row) * MAX_SLICES + s) * rank + k + q] = sums[row][q];    \
            }                                                                             \
        }                                                                                 \
    }

/* y[row j, slice s] += v[j][s][:rank] @ B[slot, :rank, slice s], COLUMN_BLOCK columns at
 * a time: four rows of B per pass over a row's accumulators (a quarter of the loads and
 * stores of one row at a time); the coefficients past the rank are zero. */
#define EXPAND(T, LOAD, STORE_ADD)                                                        \
    for (int64_t s = 0; s < sh->n_slices; ++s) {                                          \
        for (int64_t lo = sh->slice_offsets[s]; lo < sh->slice_offsets[s + 1];            \
             lo += COLUMN_BLOCK) {                                                        \
            int64_t width = sh->slice_offsets[s + 1] - lo;                                \
            if (width > COLUMN_BLOCK) width = COLUMN_BLOCK;                               \
            memset(acc, 0, sizeof(float) * (size_t)((m + 1) * COLUMN_BLOCK));            \
            const T *b_block = b + slot * sh->b_slot + lo;                                \
            for (int64_t k = 0; k < rank; k += K_STEP) {                                  \
                ROW_GROUP(T, b, b_block, k, sh->b_rank, width)                            \
                for (int64_t j = 0; j < m; j += 2) {                                      \
                    float c0[K_STEP] = {0}, c1[K_STEP] = {0};                             \
                    for (int64_t q = 0; q < k_count; ++q) {                               \
                        c0[q] = v[(j * MAX_SLICES + s) * rank + k + q];                   \
                        if (j + 1 < m) c1[q] = v[((j + 1) * MAX_SLICES + s) * rank + k + q]; \
                    }                                                                     \
                    float *out0 = acc + j * COLUMN_BLOCK, *out1 = out0 + COLUMN_BLOCK;    \
                    _Pragma("omp simd")                                                   \
                    for (int64_t c = 0; c < width; ++c) {                                 \
                        const float w0 = LOAD(b0[c]), w1 = LOAD(b1[c]);                   \
                        const float w2 = LOAD(b2[c]), w3 = LOAD(b3[c]);                   \
                        const float d0 = c0[0] * w0 + c0[1] * w1 + c0[2] * w2 + c0[3] * w3; \
                        const float d1 = c1[0] * w0 + c1[1] * w1 + c1[2] * w2 + c1[3] * w3; \
                        out0[c] += d0;                                                    \
                        out1[c] += d1;                                                    \
                    }                                                                     \
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
    const int64_t *rows = work->rows;                                                     \
    const int num_threads = (int)work->num_threads;                                       \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (num_threads > 1)") \
    for (int64_t item = 0; item < work->num_items; ++item) {                              \
        const int64_t slot = work->item_slot[item], rank = work->item_rank[item];         \
        const int64_t start = work->item_start[item], m = work->item_count[item];         \
        float *xf = malloc(sizeof(float) * (size_t)(m * sh->d_in));                       \
        float *v = malloc(sizeof(float) * (size_t)(m * MAX_SLICES * rank));               \
        float *acc = malloc(sizeof(float) * (size_t)((m + 1) * COLUMN_BLOCK));            \
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
static int refused(const lora_shape_t *sh, const lora_items_t *work) {
    if (sh->n_slices > MAX_SLICES) return -1;
    for (int64_t item = 0; item < work->num_items; ++item)
        if (work->item_count[item] > MAX_ROWS) return -2;
    return 0;
}

#define ENTRY_POINT(NAME, T, LOAD, STORE_ADD)                                             \
    int NAME(T *y, const T *x, const T *a, const T *b, const lora_shape_t *sh,            \
             const lora_items_t *work) {                                                  \
        const int status = refused(sh, work);                                             \
        if (status != 0) return status;                                                   \
        ITEM_LOOP(T, LOAD, STORE_ADD, LOAD)                                               \
        return 0;                                                                         \
    }

ENTRY_POINT(lora_items_f32, float, LOAD_F32, ADD_F32)
HAS_TYPE(lora_items_f32, lora_items_f32_fn);
ENTRY_POINT(lora_items_bf16, bf16_t, bf16_load, ADD_BF16)
