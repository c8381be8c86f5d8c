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
 * Built at run time by `cpu_linear.py` (through `cpu_native.py`) with the machine's own
 * vector instructions and OpenMP (torch's own runtime, so both share one thread pool).
 *
 * The tiles are sized for 32 vector registers of 16 floats (AVX-512): `wide_vectors` says
 * whether this build has them, and where it does not the callers keep oneDNN.
 *
 * Layouts (element strides): x [M, K] rows x_row apart, unit stride along K; panels
 * [ceil(N / 32), K, 32] contiguous; bias [N] or NULL; y [M, N] rows y_row apart.
 */
#include <stdint.h>

#define PANEL 32
#define MAX_TILE_ROWS 12
#define ROWS_PER_PASS 256
#define PREFETCH_AHEAD 16

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

typedef struct {
    const float *x, *panels, *bias;
    float *y;
    int64_t n, k, x_row, y_row;
} linear_t;

/* Rows [row, row + ROWS) of y, columns of panel p: ROWS is a constant in each copy. */
#define TILE(ROWS)                                                                          \
static void tile_##ROWS(const linear_t *a, int64_t row, int64_t p, const float *prefetch) { \
    const float *x = a->x + row * a->x_row, *w = a->panels + p * a->k * PANEL;              \
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

typedef void (*tile_fn)(const linear_t *, int64_t, int64_t, const float *);
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
    const linear_t a = {x, panels, bias, y, n, k, x_row, y_row};
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
                TILES[tile_rows](&a, row, p, panels + ahead + PREFETCH_AHEAD * PANEL);
            }
        }
    }
}
