/*
 * What the CPU kernel libraries share: the entry points `cpu_decoder.c` runs, as function
 * types (it receives their addresses from `cpu_decoder.py`, each library being built and
 * loaded on its own), the attention and LoRA kernels' argument structs, and the vector
 * `expf` and SiLU. Each defining file asserts that its function has its type, so the two
 * cannot drift apart.
 */
#ifndef LORAPLEX_CPU_KERNELS_H
#define LORAPLEX_CPU_KERNELS_H

#include <math.h>
#include <stdint.h>

#ifdef LORAPLEX_VECTOR_MATH /* the C library has vector forms of expf (glibc's libmvec) */
#pragma omp declare simd notinbranch
extern float expf(float);
#endif

/* silu(g) = g / (1 + exp(-g)) in fp32, as torch's F.silu computes it (the MLP's gate, in
 * `cpu_linear.c`'s gated product and `cpu_decoder.c`'s steps with adapters). */
static inline float silu_f32(float g) { return g / (1.0f + expf(-g)); }

typedef struct {
    int64_t num_seqs, num_heads, num_kv_heads, head_dim, block_size, table_width;
    int64_t q_row, out_row;
    float scale;
} decode_shape_t;

/* cpu_linear.c */
typedef void (*linear_f32_fn)(float *y, const float *x, const float *panels, const float *bias,
                              int64_t m, int64_t n, int64_t k, int64_t x_row, int64_t y_row,
                              int num_threads);
typedef void (*linear_f32_gated_fn)(float *y, const float *x, const float *panels, int64_t m,
                                    int64_t n, int64_t k, int64_t x_row, int64_t y_row,
                                    int num_threads);
/* y [m, n] = x [m, k] @ W^T (+ bias) for int4 and int8 panels (`bf16`: bf16 rows, else fp32);
 * 0, or -2 where a thread's scratch could not be allocated */
typedef int (*linear_int4_fn)(void *y, const void *x, int bf16, const uint8_t *codes,
                              const void *tables, const float *bias, int64_t m, int64_t n,
                              int64_t k, int64_t x_row, int64_t y_row, int num_threads,
                              int tables_fp32, int64_t group);
typedef int (*linear_int8_fn)(void *y, const void *x, int bf16, const int8_t *codes,
                              const float *scales, const float *bias, int64_t m, int64_t n,
                              int64_t k, int64_t x_row, int64_t y_row, int num_threads);
typedef int (*linear_codebook4_fn)(void *y, const void *x, int bf16, const uint8_t *codes,
                                   const float *scales, const float *bias, int64_t m,
                                   int64_t n, int64_t k, int64_t x_row, int64_t y_row,
                                   int num_threads, const float *codebook, int64_t group);
/* cpu_layer_ops.c */
typedef void (*rms_norm_f32_fn)(float *out, float *sum_out, const float *x,
                                const float *residual, const float *weight, int64_t rows,
                                int64_t width, int64_t x_stride, int64_t residual_stride,
                                int64_t sum_stride, int64_t out_stride, float eps);
typedef void (*rotary_f32_fn)(float *x, const float *cos_table, const float *sin_table,
                              int64_t rows, int64_t heads, int64_t head_dim,
                              int64_t row_stride);
/* cpu_lora.c: its shape (per projection group's layout) and one step's work items (an
 * adapter slot and the few batch rows that use it), shared by every layer of a group */
typedef struct {
    int64_t d_in, d_out, n_slices;
    const int64_t *slice_offsets; /* n_slices + 1 */
    int64_t x_row, y_row;
    int64_t a_slot, a_slice, a_rank;
    int64_t b_slot, b_rank;
} lora_shape_t;

typedef struct {
    int64_t num_items;
    const int64_t *item_slot, *item_rank, *item_start, *item_count, *rows;
    int64_t num_threads;
} lora_items_t;

typedef int (*lora_items_f32_fn)(float *y, const float *x, const float *a, const float *b,
                                 const lora_shape_t *sh, const lora_items_t *work);
/* cpu_attention.c */
typedef int (*paged_decode_f32_fn)(float *out, const float *query, const float *key_cache,
                                   const float *value_cache, const int64_t *tables,
                                   const int64_t *lengths, const decode_shape_t *sh,
                                   int num_threads);

#define HAS_TYPE(function, type) \
    _Static_assert(__builtin_types_compatible_p(__typeof__(&function), type), \
                   #function " is not a " #type)

#endif
