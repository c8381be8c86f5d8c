/*
 * fp32 linear layers on a CPU: y[M, N] = x[M, K] W^T (+ bias), sized for decode batches.
 *
 * W is stored once, at load, in panels of 32 output features: panel p is
 * W[32p : 32p + 32, :] transposed, [K, 32] contiguous (the last panel zero-padded). A tile
 * of up to 12 rows against one panel keeps its 24 accumulators in vector registers. In a
 * product of up to STREAM_ROWS rows it reads the panel as STREAMS interleaved sequential
 * streams (k = s * K / STREAMS + i, for each i every stream s in turn), each prefetched
 * PREFETCH_AHEAD values of k ahead: more streams keep more lines in flight while the
 * multiply-adds run (a decode step's linears took 0.81x one stream's time at 16 rows, 0.88x
 * at one); larger products read one stream (their later tiles find the panel in L2). Where
 * a panel takes several tiles (more than 12 rows), each tile prefetches its share of the
 * next panel (tile t of T: the t-th of T slices, 32 / T values of it for each k), so memory
 * stays busy through every tile rather than only while the first one streams (0.89x the
 * time at 16 rows against the next panel prefetched by the later tiles alone). Threads
 * split the panels. Rows are taken in passes of ROWS_PER_PASS: one pass over 1-2k rows was
 * 1.2x slower than oneDNN's packed GEMM, passes of 256 as fast.
 *
 * The MLP's gate|up product can take its SiLU gate in the same call (`linear_f32_gated`).
 *
 * Quantized weights (`linear_int4`, `linear_int8`) stream their codes in the same panels
 * and are dequantized once per call whatever the row count: in registers for up to one
 * tile of rows, else a thread dequantizes a panel into fp32 scratch (it stays in L2) and
 * runs every row tile over it. int4: codes of panel p are [K, 16] bytes, byte j of row k
 * holding column j in its low nibble and column j + 16 in its high one; its table is
 * [K / G, 2, 32] (bf16, or fp32 for an fp32 model), the scale and the zero of each column
 * per group of G inputs: w = (q - 8) * scale + zero. int8: codes of panel p are [K, 32]
 * signed bytes, with one fp32 scale per output feature: w = q * scale. Codebook int4
 * (NF4, FP4: 16 values that are not evenly spaced): codes as int4's, one fp32 scale per
 * column and group of G inputs ([K / G, 32] a panel), w = codebook[q] * scale.
 *
 * Built at run time by `cpu_linear.py` (through `cpu_native.py`) with the machine's own
 * vector instructions and OpenMP (torch's own runtime, so both share one thread pool).
 *
 * The tiles are sized for 32 vector registers of 16 floats (AVX-512): `wide_vectors` says
 * whether this build has them, and where it does not the callers keep oneDNN.
 *
 * Layouts (element strides): x [M, K] rows x_row apart, unit stride along K; panels
 * [ceil(N / 32), K, 32] contiguous (int4: codes [ceil(N / 32), K, 16] and tables
 * [ceil(N / 32), K / G, 2, 32]; int8: codes [ceil(N / 32), K, 32] and scales
 * [32 ceil(N / 32)], all contiguous); bias [N] or NULL; y [M, N] rows y_row apart.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "cpu_kernels.h"
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define PANEL 32
#define MAX_TILE_ROWS 12
#define ROWS_PER_PASS 256
#define PREFETCH_AHEAD 4   /* values of k, within a stream */
#define STREAMS 8  /* where K divides by it; else the largest power of two that does */
#define STREAM_ROWS 24
#define DENSE_ROWS 32  /* inputs a thread dequantizes at a time into a dense weight */

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

typedef uint8_t codes16 __attribute__((vector_size(16), aligned(1)));
typedef int8_t signed16 __attribute__((vector_size(16), aligned(1)));
typedef uint16_t half16 __attribute__((vector_size(32), aligned(2)));
typedef int32_t int16v __attribute__((vector_size(64)));
typedef uint32_t uint16v __attribute__((vector_size(64)));

typedef struct {
    const float *x, *bias;
    void *y;  /* fp32, or bf16 where y_bf16 */
    int64_t n, k, x_row, y_row;
    int y_bf16;
    float *gate;  /* a gated product's gate tiles, [ROWS_PER_PASS, 32] (`linear_f32_gated`) */
    int gate_phase;  /* 0: a plain product; 1: keep the tile as the gate; 2: silu(gate) * tile */
    int64_t streams;  /* a tile reads its panel as this many streams (K divides by it) */
} linear_t;

/* A float rounded to bf16's bits (to nearest even; the values are finite). */
static inline uint16_t bf16_bits(float value) {
    union { float f; uint32_t u; } bits = {value};
    return (uint16_t)((bits.u + 0x7FFF + ((bits.u >> 16) & 1)) >> 16);
}

/* Streams of a K-long panel for a product of m rows: STREAMS, or fewer where K does not
 * divide by it, up to STREAM_ROWS rows; one beyond (the later tiles of a panel read it from
 * L2, where one stream suits the L1 prefetcher: 256 rows took 1.19x oneDNN's time in 8). */
static inline int64_t streams_for(int64_t k, int64_t m) {
    int64_t streams = m <= STREAM_ROWS ? STREAMS : 1;
    while (k % streams != 0) streams /= 2;
    return streams;
}

/* One k of a tile: the panel's row k times x[., k], prefetching prefetch[k * step, + step / 2]. */
#define TILE_STEP(ROWS, k)                                                                  \
    {                                                                                       \
        const v16 w_low = *(const v16u *)(w + (k) * PANEL);                                 \
        const v16 w_high = *(const v16u *)(w + (k) * PANEL + 16);                           \
        __builtin_prefetch(prefetch + (k) * step, 0, 1);                                    \
        __builtin_prefetch(prefetch + (k) * step + step / 2, 0, 1);                         \
        _Pragma("GCC unroll 12")                                                            \
        for (int r = 0; r < ROWS; ++r) {                                                    \
            const float value = x[r * a->x_row + (k)];                                      \
            low[r] += value * w_low;                                                        \
            high[r] += value * w_high;                                                      \
        }                                                                                   \
    }

/* Rows [row, row + ROWS) of y, columns of panel p, whose [K, 32] weights are at w: ROWS is
 * a constant in each copy. One stream is its own loop (the interleaved one's control costs
 * 15% where the tiles are bound by their multiply-adds, as at 256 rows). */
#define TILE(ROWS)                                                                          \
static void tile_##ROWS(const linear_t *a, int64_t row, int64_t p, const float *w,          \
                        const float *prefetch, int64_t step) {                              \
    const float *x = a->x + row * a->x_row;                                                 \
    const int64_t span = a->k / a->streams;                                                 \
    v16 low[ROWS], high[ROWS];                                                              \
    for (int r = 0; r < ROWS; ++r) low[r] = high[r] = (v16){0};                             \
    if (a->streams == 1) {                                                                  \
        for (int64_t k = 0; k < a->k; ++k) TILE_STEP(ROWS, k)                               \
    } else {                                                                                \
        for (int64_t i = 0; i < span; ++i)                                                  \
            for (int64_t k = i; k < a->k; k += span) TILE_STEP(ROWS, k)                     \
    }                                                                                       \
    store_tile(a, row, p, ROWS, low, high);                                                 \
}

/* silu_f32 lane by lane. */
static inline v16 silu16(v16 g) {
    v16 out = g;
    _Pragma("omp simd")
    for (int i = 0; i < 16; ++i) out[i] = silu_f32(g[i]);
    return out;
}

/* A gated product's tile row: phase 1 keeps the gate's 32 values, phase 2 writes
 * y[row, first + c] = silu(gate) * up (whole panels and no bias: `linear_f32_gated`). */
static inline void store_gated(const linear_t *a, int64_t row, int64_t first, v16 low,
                               v16 high) {
    float *kept = a->gate + (row % ROWS_PER_PASS) * PANEL;
    if (a->gate_phase == 1) {
        *(v16u *)kept = low;
        *(v16u *)(kept + 16) = high;
        return;
    }
    float *out = (float *)a->y + row * a->y_row + first;
    *(v16u *)out = silu16(*(const v16u *)kept) * low;
    *(v16u *)(out + 16) = silu16(*(const v16u *)(kept + 16)) * high;
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
        if (a->gate_phase) {
            store_gated(a, row + r, first, low[r], high[r]);
            continue;
        }
        const int64_t offset = (row + r) * a->y_row + first;
        float *out = (float *)a->y + offset;
        uint16_t *out_bf16 = (uint16_t *)a->y + offset;
        if (columns == PANEL && !a->y_bf16) {
            *(v16u *)out = low[r] + bias_low;
            *(v16u *)(out + 16) = high[r] + bias_high;
            continue;
        }
        for (int64_t c = 0; c < columns; ++c) {
            float value = c < 16 ? low[r][c] : high[r][c - 16];
            value = a->bias != 0 ? value + a->bias[first + c] : value;
            if (a->y_bf16)
                out_bf16[c] = bf16_bits(value);
            else
                out[c] = value;
        }
    }
}

TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6)
TILE(7) TILE(8) TILE(9) TILE(10) TILE(11) TILE(12)

typedef void (*tile_fn)(const linear_t *, int64_t, int64_t, const float *, const float *,
                        int64_t);
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

/* No more threads than units of work: a thread with none still joins the region's barrier,
 * and on a busy machine waits there for a core (a one-panel product took 0.75 ms, not 12 us,
 * beside another process's two threads). */
static inline int threads_for(int64_t units, int num_threads) {
    return units < 1 ? 1 : units < num_threads ? (int)units : num_threads;
}

/* Rows [start, start + rows) against one panel (its weights at own, the next one the thread
 * reads at next), into y's panel p: equal tiles of up to 12 rows (16 rows are 8 + 8, not
 * 12 + 4), prefetching as the header says. */
static void panel_rows(const linear_t *a, int64_t start, int64_t rows, int64_t p,
                       const float *own, const float *next) {
    const int64_t tiles = (rows + MAX_TILE_ROWS - 1) / MAX_TILE_ROWS;
    const int64_t height = (rows + tiles - 1) / tiles;
    const int64_t step = (PANEL + tiles - 1) / tiles;  /* prefetched values a k */
    for (int64_t row = start, t = 0; row < start + rows; row += height, ++t) {
        const int64_t tile_rows = start + rows - row < height ? start + rows - row : height;
        const float *ahead = tiles == 1 ? own + PREFETCH_AHEAD * PANEL : next + t * step * a->k;
        TILES[tile_rows](a, row, p, own, ahead, step);
    }
}

void linear_f32(float *y, const float *x, const float *panels, const float *bias,
                int64_t m, int64_t n, int64_t k, int64_t x_row, int64_t y_row,
                int num_threads) {
    const linear_t a = {x, bias, y, n, k, x_row, y_row, 0, 0, 0, streams_for(k, m)};
    const int64_t num_panels = (n + PANEL - 1) / PANEL, panel_size = k * PANEL;
    num_threads = threads_for(num_panels, num_threads);
    _Pragma("omp parallel num_threads(num_threads) if (num_threads > 1)")
    for (int64_t start = 0; start < m; start += ROWS_PER_PASS) {
        const int64_t rows = m - start < ROWS_PER_PASS ? m - start : ROWS_PER_PASS;
        _Pragma("omp for schedule(static)")
        for (int64_t p = 0; p < num_panels; ++p) {
            const float *own = panels + p * panel_size;
            panel_rows(&a, start, rows, p, own, own + panel_size);
        }
    }
}

/*
 * y[M, n] = silu(x W_gate^T) * (x W_up^T) for a gate|up weight [2n, K] in panels (gate's n
 * outputs, then up's; n a multiple of 32): the product of the MLP's fused projection and its
 * activation, without storing the [M, 2n] product between them. A thread takes gate panel
 * j, keeping its tiles, then up panel j, writing y's panel j from both.
 */
void linear_f32_gated(float *y, const float *x, const float *panels, int64_t m, int64_t n,
                      int64_t k, int64_t x_row, int64_t y_row, int num_threads) {
    const int64_t pairs = n / PANEL, panel_size = k * PANEL;
    num_threads = threads_for(pairs, num_threads);
    _Pragma("omp parallel num_threads(num_threads) if (num_threads > 1)")
    {
        float gate[ROWS_PER_PASS * PANEL] __attribute__((aligned(64)));
        linear_t a = {x, 0, y, n, k, x_row, y_row, 0, gate, 0, streams_for(k, m)};
        for (int64_t start = 0; start < m; start += ROWS_PER_PASS) {
            const int64_t rows = m - start < ROWS_PER_PASS ? m - start : ROWS_PER_PASS;
            _Pragma("omp for schedule(static)")
            for (int64_t j = 0; j < pairs; ++j) {
                const float *gate_weights = panels + j * panel_size;
                const float *up_weights = gate_weights + pairs * panel_size;
                a.gate_phase = 1;
                panel_rows(&a, start, rows, j, gate_weights, up_weights);
                a.gate_phase = 2;
                panel_rows(&a, start, rows, j, up_weights, gate_weights + panel_size);
            }
        }
    }
}
HAS_TYPE(linear_f32, linear_f32_fn);
HAS_TYPE(linear_f32_gated, linear_f32_gated_fn);

/* Widening 16 narrow integers: compilers turn the generic form into 16 scalar loads. */
#ifdef __AVX512F__
static inline int16v widen_bytes(const uint8_t *bytes) {
    return (int16v)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)bytes));
}
static inline int16v widen_signed_bytes(const int8_t *bytes) {
    return (int16v)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)bytes));
}
static inline uint16v widen_halves(const uint16_t *halves) {
    return (uint16v)_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)halves));
}
#else
static inline int16v widen_bytes(const uint8_t *bytes) {
    return __builtin_convertvector(*(const codes16 *)bytes, int16v);
}
static inline int16v widen_signed_bytes(const int8_t *bytes) {
    return __builtin_convertvector(*(const signed16 *)bytes, int16v);
}
static inline uint16v widen_halves(const uint16_t *halves) {
    return __builtin_convertvector(*(const half16 *)halves, uint16v);
}
#endif

/* 16 bf16 values as fp32 (exact: bf16 is fp32's upper half). */
static inline v16 bf16_values(const uint16_t *values) {
    return (v16)(widen_halves(values) << 16);
}

/* A quantized weight as the kernels read it (layouts at the top). */
typedef struct {
    const void *codes, *tables;
    int tables_fp32;  /* int4 tables in fp32, else bf16 */
    int64_t k, group;  /* inputs, and inputs per group (int8: k, one group) */
    const float *codebook;  /* codebook int4: the 16 values the codes stand for */
} quantized_t;

/* What multiplies a group's 32 columns: w = q * scale + zero (codebook int4: the codebook's
 * 16 values, loaded once a group, in place of q). */
typedef struct { v16 scale_low, scale_high, zero_low, zero_high, codebook; } group_t;

/* int4: the group's table, its zero folded as zero - 8 * scale (one multiply-add a weight). */
static inline group_t int4_group(const quantized_t *w, int64_t p, int64_t start) {
    const int64_t offset = (p * (w->k / w->group) + start / w->group) * 2 * PANEL;
    group_t g;
    if (w->tables_fp32) {
        const float *table = (const float *)w->tables + offset;
        g = (group_t){*(const v16u *)table, *(const v16u *)(table + 16),
                      *(const v16u *)(table + PANEL), *(const v16u *)(table + 48)};
    } else {
        const uint16_t *table = (const uint16_t *)w->tables + offset;
        g = (group_t){bf16_values(table), bf16_values(table + 16), bf16_values(table + PANEL),
                      bf16_values(table + 48)};
    }
    g.zero_low -= 8.0f * g.scale_low;
    g.zero_high -= 8.0f * g.scale_high;
    return g;
}

static inline void int4_weights(const quantized_t *w, int64_t p, int64_t k, const group_t *g,
                                v16 *low, v16 *high) {
    const int16v q = widen_bytes((const uint8_t *)w->codes + (p * w->k + k) * (PANEL / 2));
    *low = __builtin_convertvector(q & 15, v16) * g->scale_low + g->zero_low;
    *high = __builtin_convertvector(q >> 4, v16) * g->scale_high + g->zero_high;
}

/* codebook int4 (NF4, FP4): the group's 32 fp32 scales; a weight is codebook[q] * scale. */
static inline group_t codebook4_group(const quantized_t *w, int64_t p, int64_t start) {
    const float *scales = (const float *)w->tables
                          + (p * (w->k / w->group) + start / w->group) * PANEL;
    return (group_t){*(const v16u *)scales, *(const v16u *)(scales + 16), {0}, {0},
                     *(const v16u *)w->codebook};
}

/* The codebook's values for 16 codes in 0..15 (one permute with AVX-512). */
static inline v16 codebook_values(v16 codebook, int16v q) {
#ifdef __AVX512F__
    return (v16)_mm512_permutexvar_ps((__m512i)q, (__m512)codebook);
#else
    v16 values;
    for (int i = 0; i < 16; ++i) values[i] = codebook[q[i]];
    return values;
#endif
}

static inline void codebook4_weights(const quantized_t *w, int64_t p, int64_t k,
                                     const group_t *g, v16 *low, v16 *high) {
    const int16v q = widen_bytes((const uint8_t *)w->codes + (p * w->k + k) * (PANEL / 2));
    *low = codebook_values(g->codebook, q & 15) * g->scale_low;
    *high = codebook_values(g->codebook, q >> 4) * g->scale_high;
}

/* int8: the panel's 32 scales (none: the codes themselves), no zero. */
static inline group_t int8_group(const quantized_t *w, int64_t p, int64_t start) {
    (void)start;
    const float *scales = (const float *)w->tables + p * PANEL;
    if (w->tables == 0) return (group_t){{0}, {0}, {0}, {0}};
    return (group_t){*(const v16u *)scales, *(const v16u *)(scales + 16), {0}, {0}};
}

static inline void int8_weights(const quantized_t *w, int64_t p, int64_t k, const group_t *g,
                                v16 *low, v16 *high) {
    const int8_t *row = (const int8_t *)w->codes + (p * w->k + k) * PANEL;
    *low = __builtin_convertvector(widen_signed_bytes(row), v16);
    *high = __builtin_convertvector(widen_signed_bytes(row + 16), v16);
    if (w->tables != 0) {
        *low *= g->scale_low;
        *high *= g->scale_high;
    }
}

/* A format's two ways through a panel p: dequantized into out [K, 32] (then read by the
 * fp32 tiles), or, for up to one tile of rows, dequantized in registers as it streams (a
 * decode step's few rows pay no scratch round trip). ROWS is a constant in each copy. */
#define DEQUANTIZE_PANEL(FORMAT)                                                            \
static void FORMAT##_dequantize_panel(float *out, const quantized_t *w, int64_t p) {        \
    for (int64_t start = 0; start < w->k; start += w->group) {                              \
        const group_t g = FORMAT##_group(w, p, start);                                      \
        for (int64_t k = start; k < start + w->group; ++k)                                  \
            FORMAT##_weights(w, p, k, &g, (v16 *)(out + k * PANEL),                         \
                             (v16 *)(out + k * PANEL + 16));                                \
    }                                                                                       \
}

#define QUANTIZED_TILE(FORMAT, ROWS)                                                        \
static void FORMAT##_tile_##ROWS(const linear_t *a, int64_t p, const quantized_t *w) {      \
    v16 low[ROWS], high[ROWS];                                                              \
    for (int r = 0; r < ROWS; ++r) low[r] = high[r] = (v16){0};                             \
    for (int64_t start = 0; start < w->k; start += w->group) {                              \
        const group_t g = FORMAT##_group(w, p, start);                                      \
        for (int64_t k = start; k < start + w->group; ++k) {                                \
            v16 w_low, w_high;                                                              \
            FORMAT##_weights(w, p, k, &g, &w_low, &w_high);                                 \
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

/* 16 fp32 values rounded to bf16 (to nearest even; the weights are finite). */
static inline void store_bf16(uint16_t *out, v16 values) {
    const uint16v bits = (uint16v)values;
    const uint16v rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
#ifdef __AVX512F__
    _mm256_storeu_si256((__m256i *)out, _mm512_cvtepi32_epi16((__m512i)rounded));
#else
    for (int i = 0; i < 16; ++i) out[i] = (uint16_t)rounded[i];
#endif
}

/* out [K, N] bf16, rows n_row apart = the weight transposed. Threads split the inputs in
 * blocks of DENSE_ROWS (within a group: group sizes are multiples of it), and a block walks
 * every panel, so each output row is written front to back. */
#define DEQUANTIZE_DENSE(FORMAT)                                                            \
static void FORMAT##_dequantize_dense(uint16_t *out, const quantized_t *w, int64_t n,       \
                                      int64_t n_row, int num_threads) {                     \
    const int64_t num_panels = (n + PANEL - 1) / PANEL;                                     \
    const int64_t blocks = (w->k + DENSE_ROWS - 1) / DENSE_ROWS;                            \
    num_threads = threads_for(blocks, num_threads);                                         \
    _Pragma("omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)") \
    for (int64_t block = 0; block < blocks; ++block) {                                      \
        const int64_t start = block * DENSE_ROWS;                                           \
        const int64_t end = w->k - start < DENSE_ROWS ? w->k : start + DENSE_ROWS;          \
        for (int64_t p = 0; p < num_panels; ++p) {                                          \
            const int64_t columns = n - p * PANEL < PANEL ? n - p * PANEL : PANEL;          \
            const group_t g = FORMAT##_group(w, p, start);                                  \
            for (int64_t k = start; k < end; ++k) {                                        \
                v16 low, high;                                                              \
                FORMAT##_weights(w, p, k, &g, &low, &high);                                 \
                uint16_t *target = out + k * n_row + p * PANEL, row[PANEL];                 \
                uint16_t *first = columns == PANEL ? target : row;                          \
                store_bf16(first, low);                                                     \
                store_bf16(first + 16, high);                                               \
                for (int64_t c = 0; first == row && c < columns; ++c) target[c] = row[c];   \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
}

typedef void (*quantized_tile_fn)(const linear_t *, int64_t, const quantized_t *);
typedef void (*dequantize_fn)(float *, const quantized_t *, int64_t);

#define QUANTIZED_FORMAT(FORMAT)                                                            \
DEQUANTIZE_PANEL(FORMAT)                                                                    \
DEQUANTIZE_DENSE(FORMAT)                                                                    \
QUANTIZED_TILE(FORMAT, 1) QUANTIZED_TILE(FORMAT, 2) QUANTIZED_TILE(FORMAT, 3)               \
QUANTIZED_TILE(FORMAT, 4) QUANTIZED_TILE(FORMAT, 5) QUANTIZED_TILE(FORMAT, 6)               \
QUANTIZED_TILE(FORMAT, 7) QUANTIZED_TILE(FORMAT, 8) QUANTIZED_TILE(FORMAT, 9)               \
QUANTIZED_TILE(FORMAT, 10) QUANTIZED_TILE(FORMAT, 11) QUANTIZED_TILE(FORMAT, 12)            \
static const quantized_tile_fn FORMAT##_TILES[MAX_TILE_ROWS + 1] = {                        \
    0, FORMAT##_tile_1, FORMAT##_tile_2, FORMAT##_tile_3, FORMAT##_tile_4, FORMAT##_tile_5, \
    FORMAT##_tile_6, FORMAT##_tile_7, FORMAT##_tile_8, FORMAT##_tile_9, FORMAT##_tile_10,   \
    FORMAT##_tile_11, FORMAT##_tile_12,                                                     \
};

QUANTIZED_FORMAT(int4)
QUANTIZED_FORMAT(int8)
QUANTIZED_FORMAT(codebook4)

/* y = x W^T (+ bias) for a quantized W. Up to one tile of rows dequantizes in registers;
 * more rows dequantize each panel once into a thread's scratch and run every tile over it.
 * Returns 0, or -2 where a thread's scratch could not be allocated (y is then unset). */
static int quantized_panels(const linear_t *a, int64_t m, const quantized_t *w,
                            const quantized_tile_fn *tiles, dequantize_fn dequantize,
                            int num_threads) {
    const int64_t num_panels = (a->n + PANEL - 1) / PANEL;
    num_threads = threads_for(num_panels, num_threads);
    if (m <= MAX_TILE_ROWS) {
        _Pragma("omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)")
        for (int64_t p = 0; p < num_panels; ++p)
            tiles[m](a, p, w);
        return 0;
    }
    int failed = 0;
    _Pragma("omp parallel num_threads(num_threads) if (num_threads > 1)")
    {
        float *scratch = aligned_alloc(64, a->k * PANEL * sizeof(float));  /* [K, 32] */
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
            const int64_t tile_count = (rows + MAX_TILE_ROWS - 1) / MAX_TILE_ROWS;
            const int64_t height = (rows + tile_count - 1) / tile_count;
            _Pragma("omp for schedule(static)")
            for (int64_t p = 0; p < num_panels; ++p) {
                dequantize(scratch, w, p);
                for (int64_t row = start; row < start + rows; row += height) {
                    const int64_t tile_rows = start + rows - row < height ? start + rows - row
                                                                          : height;
                    TILES[tile_rows](a, row, p, scratch, scratch + PREFETCH_AHEAD * PANEL, PANEL);
                }
            }
        }
        free(scratch);
    }
    return failed ? -2 : 0;
}

/* `quantized_panels`, bf16 rows (x_bf16, else a->x in fp32) read once into fp32 first. */
static int quantized_linear(linear_t *a, const uint16_t *x_bf16, int64_t m,
                            const quantized_t *w, const quantized_tile_fn *tiles,
                            dequantize_fn dequantize, int num_threads) {
    float *rows = 0;
    if (x_bf16 != 0) {  /* bf16 rows: read once into fp32 [m, k] */
        rows = malloc(m * a->k * sizeof(float));
        if (rows == 0) return -2;
        for (int64_t r = 0; r < m; ++r)
            for (int64_t k = 0; k < a->k; ++k) {
                union { uint32_t u; float f; } value = {(uint32_t)x_bf16[r * a->x_row + k]
                                                        << 16};
                rows[r * a->k + k] = value.f;
            }
        a->x = rows;
        a->x_row = a->k;
    }
    const int status = quantized_panels(a, m, w, tiles, dequantize, num_threads);
    free(rows);
    return status;
}

/* int4 W: `tables_fp32` says whether its tables are fp32 (else bf16); G divides K. With
 * `bf16`, x and y are bf16 (y rounded once from the fp32 sums), else fp32. */
int linear_int4(void *y, const void *x, int bf16, const uint8_t *codes, const void *tables,
                const float *bias, int64_t m, int64_t n, int64_t k, int64_t x_row,
                int64_t y_row, int num_threads, int tables_fp32, int64_t group) {
    linear_t a = {bf16 ? 0 : x, bias, y, n, k, x_row, y_row, bf16, 0, 0, 1};
    const quantized_t w = {codes, tables, tables_fp32, k, group};
    return quantized_linear(&a, bf16 ? x : 0, m, &w, int4_TILES, int4_dequantize_panel,
                            num_threads);
}

/* int8 W: one fp32 scale per output feature; `bf16` as for linear_int4. */
int linear_int8(void *y, const void *x, int bf16, const int8_t *codes, const float *scales,
                const float *bias, int64_t m, int64_t n, int64_t k, int64_t x_row,
                int64_t y_row, int num_threads) {
    linear_t a = {bf16 ? 0 : x, bias, y, n, k, x_row, y_row, bf16, 0, 0, 1};
    const quantized_t w = {codes, scales, 1, k, k};
    return quantized_linear(&a, bf16 ? x : 0, m, &w, int8_TILES, int8_dequantize_panel,
                            num_threads);
}

/* codebook int4 W: codes as int4's, fp32 scales [K / G, 32] a panel, `codebook` the 16
 * values of the codes (w = codebook[q] * scale); `bf16` as for linear_int4. */
int linear_codebook4(void *y, const void *x, int bf16, const uint8_t *codes,
                     const float *scales, const float *bias, int64_t m, int64_t n, int64_t k,
                     int64_t x_row, int64_t y_row, int num_threads, const float *codebook,
                     int64_t group) {
    linear_t a = {bf16 ? 0 : x, bias, y, n, k, x_row, y_row, bf16, 0, 0, 1};
    const quantized_t w = {codes, scales, 1, k, group, codebook};
    return quantized_linear(&a, bf16 ? x : 0, m, &w, codebook4_TILES,
                            codebook4_dequantize_panel, num_threads);
}

HAS_TYPE(linear_codebook4, linear_codebook4_fn);
HAS_TYPE(linear_int4, linear_int4_fn);
HAS_TYPE(linear_int8, linear_int8_fn);

/* out [K, N] bf16, rows n_row apart: int4 W transposed, for a dense bf16 product. */
void dequantize_int4(uint16_t *out, const uint8_t *codes, const void *tables, int tables_fp32,
                     int64_t n, int64_t k, int64_t group, int64_t n_row, int num_threads) {
    const quantized_t w = {codes, tables, tables_fp32, k, group};
    int4_dequantize_dense(out, &w, n, n_row, num_threads);
}

/* out [K, N] bf16, rows n_row apart: int8 W's codes transposed (exact in bf16), for a dense
 * bf16 product scaled per output feature after. */
void dequantize_int8(uint16_t *out, const int8_t *codes, int64_t n, int64_t k, int64_t n_row,
                     int num_threads) {
    const quantized_t w = {codes, 0, 1, k, k};
    int8_dequantize_dense(out, &w, n, n_row, num_threads);
}

/* out [K, N] bf16, rows n_row apart: codebook int4 W transposed, for a dense bf16 product. */
void dequantize_codebook4(uint16_t *out, const uint8_t *codes, const float *scales,
                          const float *codebook, int64_t n, int64_t k, int64_t group,
                          int64_t n_row, int num_threads) {
    const quantized_t w = {codes, scales, 1, k, group, codebook};
    codebook4_dequantize_dense(out, &w, n, n_row, num_threads);
}
