/*
 * fp32 linear layers on a CPU: y[M, N] = x[M, K] W^T (+ bias), sized for decode batches.
 *
 * W is stored once, at load, in panels of 32 output features: panel p is
 * W[32p : 32p + 32, :] transposed, [K, 32] contiguous (the last panel zero-padded). A tile
 * of up to 12 rows against one panel keeps its 24 accumulators in vector registers and
 * reads the panel as one sequential stream, prefetched PREFETCH_AHEAD values of k ahead;
 * the tiles after the first of a panel (the panel is then in cache) prefetch the next
 * panel instead, so memory stays busy while a cached panel is reused. Threads split the
 * panels. Rows are taken in passes of ROWS_PER_PASS: one pass over 1-2k rows was 1.2x
 * slower than oneDNN's packed GEMM, passes of 256 as fast.
 *
 * int4 weights (`linear_int4`) use the same tiles: a thread dequantizes one panel of codes
 * into fp32 scratch (it stays in L2, read once per tile) and runs every row tile over it, so
 * a weight is dequantized once per call whatever the row count, and memory streams half a
 * byte per weight. Codes of panel p are [K, 16] bytes, byte j of row k holding column j in
 * its low nibble and column j + 16 in its high one; its table is [K / G, 2, 32] (bf16, or
 * fp32 for an fp32 model), the scale and the zero of each column per group of G inputs:
 * w = (q - 8) * scale + zero.
 *
 * Built at run time by `cpu_linear.py` (through `cpu_native.py`) with the machine's own
 * vector instructions and OpenMP (torch's own runtime, so both share one thread pool).
 *
 * The tiles are sized for 32 vector registers of 16 floats (AVX-512): `wide_vectors` says
 * whether this build has them, and where it does not the callers keep oneDNN.
 *
 * Layouts (element strides): x [M, K] rows x_row apart, unit stride along K; panels
 * [ceil(N / 32), K, 32] contiguous (int4: codes [ceil(N / 32), K, 16] and tables
 * [ceil(N / 32), K / G, 2, 32] contiguous); bias [N] or NULL; y [M, N] rows y_row apart.
 */
#include <stdint.h>
#include <stdlib.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define PANEL 32
#define MAX_TILE_ROWS 12
#define ROWS_PER_PASS 256
#define PREFETCH_AHEAD 16
#define CODE_BYTES (PANEL / 2)  /* bytes of codes per input of a panel */

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

typedef uint8_t codes16 __attribute__((vector_size(16), aligned(1)));
typedef uint16_t half16 __attribute__((vector_size(32), aligned(2)));
typedef int32_t int16v __attribute__((vector_size(64)));
typedef uint32_t uint16v __attribute__((vector_size(64)));

typedef struct {
    const float *x, *bias;
    float *y;
    int64_t n, k, x_row, y_row;
} linear_t;

/* Rows [row, row + ROWS) of y, columns of panel p, whose [K, 32] weights are at w: ROWS is
 * a constant in each copy. */
#define TILE(ROWS)                                                                          \
static void tile_##ROWS(const linear_t *a, int64_t row, int64_t p, const float *w,          \
                        const float *prefetch) {                                            \
    const float *x = a->x + row * a->x_row;                                                 \
    v16 low[ROWS], high[ROWS];                                                              \
    for (int r = 0; r < ROWS; ++r) low[r] = high[r] = (v16){0};                             \
    for (int64_t k = 0; k < a->k; ++k) {                                                    \
        const v16 w_low = *(const v16u *)(w + k * PANEL);                                   \
        const v16 w_high = *(const v16u *)(w + k * PANEL + 16);                             \
        __builtin_prefetch(prefetch + k * PANEL, 0, 1);                                     \
        __builtin_prefetch(prefetch + k * PANEL + 16, 0, 1);                                \
        _Pragma("GCC unroll 12")                                                            \
        for (int r = 0; r < ROWS; ++r) {                                                    \
            const float value = x[r * a->x_row + k];                                        \
            low[r] += value * w_low;                                                        \
            high[r] += value * w_high;                                                      \
        }                                                                                   \
    }                                                                                       \
    store_tile(a, row, p, ROWS, low, high);                                                 \
}

/* y[row + r, 32p + c] = tile value (+ bias), only for columns below n. */
static inline void store_tile(const linear_t *a, int64_t row, int64_t p, int rows,
                              const v16 *low, const v16 *high) {
    const int64_t first = p * PANEL, columns = a->n - first < PANEL ? a->n - first : PANEL;
    v16 bias_low = {0}, bias_high = {0};
    if (a->bias != 0 && columns == PANEL) {
        bias_low = *(const v16u *)(a->bias + first);
        bias_high = *(const v16u *)(a->bias + first + 16);
    }
    for (int r = 0; r < rows; ++r) {
        float *out = a->y + (row + r) * a->y_row + first;
        if (columns == PANEL) {
            *(v16u *)out = low[r] + bias_low;
            *(v16u *)(out + 16) = high[r] + bias_high;
            continue;
        }
        for (int64_t c = 0; c < columns; ++c) {
            const float value = c < 16 ? low[r][c] : high[r][c - 16];
            out[c] = a->bias != 0 ? value + a->bias[first + c] : value;
        }
    }
}

TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6)
TILE(7) TILE(8) TILE(9) TILE(10) TILE(11) TILE(12)

typedef void (*tile_fn)(const linear_t *, int64_t, int64_t, const float *, const float *);
static const tile_fn TILES[MAX_TILE_ROWS + 1] = {
    0, tile_1, tile_2, tile_3, tile_4, tile_5, tile_6,
    tile_7, tile_8, tile_9, tile_10, tile_11, tile_12,
};

int wide_vectors(void) {
#ifdef __AVX512F__
    return 1;
#else
    return 0;
#endif
}

void linear_f32(float *y, const float *x, const float *panels, const float *bias,
                int64_t m, int64_t n, int64_t k, int64_t x_row, int64_t y_row,
                int num_threads) {
    const linear_t a = {x, bias, y, n, k, x_row, y_row};
    const int64_t num_panels = (n + PANEL - 1) / PANEL, panel_size = k * PANEL;
    _Pragma("omp parallel num_threads(num_threads) if (num_threads > 1)")
    for (int64_t start = 0; start < m; start += ROWS_PER_PASS) {
        const int64_t rows = m - start < ROWS_PER_PASS ? m - start : ROWS_PER_PASS;
        /* tiles of equal height: 16 rows are 8 + 8, not 12 + 4 */
        const int64_t tiles = (rows + MAX_TILE_ROWS - 1) / MAX_TILE_ROWS;
        const int64_t height = (rows + tiles - 1) / tiles;
        _Pragma("omp for schedule(static)")
        for (int64_t p = 0; p < num_panels; ++p) {
            for (int64_t row = start; row < start + rows; row += height) {
                const int64_t tile_rows = start + rows - row < height ? start + rows - row : height;
                const int64_t ahead = row == start ? p * panel_size : (p + 1) * panel_size;
                TILES[tile_rows](&a, row, p, panels + p * panel_size,
                                 panels + ahead + PREFETCH_AHEAD * PANEL);
            }
        }
    }
}

/* Widening 16 narrow integers: compilers turn the generic form into 16 scalar loads. */
#ifdef __AVX512F__
static inline int16v widen_bytes(const uint8_t *bytes) {
    return (int16v)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)bytes));
}
static inline uint16v widen_halves(const uint16_t *halves) {
    return (uint16v)_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)halves));
}
#else
static inline int16v widen_bytes(const uint8_t *bytes) {
    return __builtin_convertvector(*(const codes16 *)bytes, int16v);
}
static inline uint16v widen_halves(const uint16_t *halves) {
    return __builtin_convertvector(*(const half16 *)halves, uint16v);
}
#endif

/* 16 bf16 values as fp32 (exact: bf16 is fp32's upper half). */
static inline v16 bf16_values(const uint16_t *values) {
    return (v16)(widen_halves(values) << 16);
}

/* The scale and the zero of a group's 32 columns, the zero folded as zero - 8 * scale so
 * that w = q * scale + zero is one multiply-add. */
typedef struct { v16 scale_low, scale_high, zero_low, zero_high; } group_t;

static inline group_t group_values(const void *tables, int64_t offset, int fp32) {
    group_t g;
    if (fp32) {
        const float *table = (const float *)tables + offset;
        g = (group_t){*(const v16u *)table, *(const v16u *)(table + 16),
                      *(const v16u *)(table + PANEL), *(const v16u *)(table + 48)};
    } else {
        const uint16_t *table = (const uint16_t *)tables + offset;
        g = (group_t){bf16_values(table), bf16_values(table + 16), bf16_values(table + PANEL),
                      bf16_values(table + 48)};
    }
    g.zero_low -= 8.0f * g.scale_low;
    g.zero_high -= 8.0f * g.scale_high;
    return g;
}

/* Columns 0-15 and 16-31 of a panel's row of codes, dequantized. */
#define DEQUANTIZE_ROW(codes, g, w_low, w_high)                                             \
    const int16v q = widen_bytes(codes);                                                    \
    const v16 w_low = __builtin_convertvector(q & 15, v16) * g.scale_low + g.zero_low;       \
    const v16 w_high = __builtin_convertvector(q >> 4, v16) * g.scale_high + g.zero_high;

/* out [K, 32] fp32 = panel of codes [K, 16] dequantized by its table [K / G, 2, 32], which
 * starts `table` elements into `tables`. */
static void dequantize_panel(float *out, const uint8_t *codes, const void *tables,
                             int64_t table, int fp32, int64_t k, int64_t group) {
    for (int64_t start = 0; start < k; start += group, table += 2 * PANEL) {
        const group_t g = group_values(tables, table, fp32);
        for (int64_t i = start; i < start + group; ++i) {
            DEQUANTIZE_ROW(codes + i * CODE_BYTES, g, w_low, w_high)
            *(v16 *)(out + i * PANEL) = w_low;
            *(v16 *)(out + i * PANEL + 16) = w_high;
        }
    }
}

/* All ROWS rows (at most one tile) against int4 panel p, dequantized in registers as it
 * streams: a decode step's few rows pay no scratch round trip. */
#define INT4_TILE(ROWS)                                                                     \
static void int4_tile_##ROWS(const linear_t *a, int64_t p, const uint8_t *codes,            \
                             const void *tables, int64_t table, int fp32, int64_t group) {  \
    v16 low[ROWS], high[ROWS];                                                              \
    for (int r = 0; r < ROWS; ++r) low[r] = high[r] = (v16){0};                             \
    for (int64_t start = 0; start < a->k; start += group, table += 2 * PANEL) {             \
        const group_t g = group_values(tables, table, fp32);                                \
        for (int64_t k = start; k < start + group; ++k) {                                   \
            DEQUANTIZE_ROW(codes + k * CODE_BYTES, g, w_low, w_high)                        \
            _Pragma("GCC unroll 12")                                                        \
            for (int r = 0; r < ROWS; ++r) {                                                \
                const float value = a->x[r * a->x_row + k];                                 \
                low[r] += value * w_low;                                                    \
                high[r] += value * w_high;                                                  \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    store_tile(a, 0, p, ROWS, low, high);                                                   \
}

INT4_TILE(1) INT4_TILE(2) INT4_TILE(3) INT4_TILE(4) INT4_TILE(5) INT4_TILE(6)
INT4_TILE(7) INT4_TILE(8) INT4_TILE(9) INT4_TILE(10) INT4_TILE(11) INT4_TILE(12)

typedef void (*int4_tile_fn)(const linear_t *, int64_t, const uint8_t *, const void *,
                             int64_t, int, int64_t);
static const int4_tile_fn INT4_TILES[MAX_TILE_ROWS + 1] = {
    0, int4_tile_1, int4_tile_2, int4_tile_3, int4_tile_4, int4_tile_5, int4_tile_6,
    int4_tile_7, int4_tile_8, int4_tile_9, int4_tile_10, int4_tile_11, int4_tile_12,
};

/* y = x W^T (+ bias) for int4 W (layouts above; `tables_fp32`: fp32 tables, else bf16);
 * G divides K. Up to one tile of rows
 * dequantizes in registers; more rows dequantize each panel once into a thread's scratch
 * and run every tile over it. Returns 0, or -2 where a thread's scratch could not be
 * allocated (y is then unset). */
int linear_int4(float *y, const float *x, const uint8_t *codes, const void *tables,
                int tables_fp32, const float *bias, int64_t m, int64_t n, int64_t k,
                int64_t group, int64_t x_row, int64_t y_row, int num_threads) {
    const linear_t a = {x, bias, y, n, k, x_row, y_row};
    const int64_t num_panels = (n + PANEL - 1) / PANEL, table_size = (k / group) * 2 * PANEL;
    if (m <= MAX_TILE_ROWS) {
        _Pragma("omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)")
        for (int64_t p = 0; p < num_panels; ++p)
            INT4_TILES[m](&a, p, codes + p * k * CODE_BYTES, tables, p * table_size,
                          tables_fp32, group);
        return 0;
    }
    int failed = 0;
    _Pragma("omp parallel num_threads(num_threads) if (num_threads > 1)")
    {
        float *scratch = aligned_alloc(64, k * PANEL * sizeof(float));  /* [K, 32] */
        if (scratch == 0) {
            _Pragma("omp atomic write")
            failed = 1;
        }
        _Pragma("omp barrier")
        int skip;
        _Pragma("omp atomic read")
        skip = failed;
        for (int64_t start = 0; !skip && start < m; start += ROWS_PER_PASS) {
            const int64_t rows = m - start < ROWS_PER_PASS ? m - start : ROWS_PER_PASS;
            const int64_t tiles = (rows + MAX_TILE_ROWS - 1) / MAX_TILE_ROWS;
            const int64_t height = (rows + tiles - 1) / tiles;
            _Pragma("omp for schedule(static)")
            for (int64_t p = 0; p < num_panels; ++p) {
                dequantize_panel(scratch, codes + p * k * CODE_BYTES, tables, p * table_size,
                                 tables_fp32, k, group);
                for (int64_t row = start; row < start + rows; row += height) {
                    const int64_t tile_rows = start + rows - row < height ? start + rows - row
                                                                          : height;
                    TILES[tile_rows](&a, row, p, scratch, scratch + PREFETCH_AHEAD * PANEL);
                }
            }
        }
        free(scratch);
    }
    return failed ? -2 : 0;
}
