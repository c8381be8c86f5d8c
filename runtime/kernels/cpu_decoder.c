/*
 * An fp32 decode step's decoder layers on a CPU as one call, over fp32 weights or int4/int8
 * ones (weight-only, fp32 activations).
 *
 * Run layer by layer from Python, a decoder layer is a dozen module calls, views and
 * kernel calls: about 0.2 ms of interpreter work a layer, 5-9 ms of a 135M-parameter
 * model's 30-layer step whatever the batch. Here the same kernels run in the same order
 * (`cpu_linear.c`, `cpu_layer_ops.c`, `cpu_attention.c`: their addresses come from
 * `cpu_decoder.py`), so the result is the layer-by-layer path's bit for bit; only the
 * copies into the KV cache are this file's own. A step with adapters adds each projection
 * group's LoRA delta right after its product (`cpu_lora.c`, as `LoraBatch.apply` does);
 * the gate|up product is then stored, and the gate taken here, with the C library's
 * exponential (the layer-by-layer path's is torch's: the two differ in the last bits).
 *
 * Per layer, over T rows of width d (q_size = H * D, kv_size = Hkv * D):
 *   normed = rms_norm(hidden)                  qkv = normed @ Wqkv^T (+ b)
 *   rotary(q and k of qkv)                     key/value of row t -> cache slot slots[t]
 *   attended = paged decode of q               projected = attended @ Wo^T (+ b)
 *   hidden += projected; normed = rms_norm(hidden)
 *   activated = silu(normed @ Wgate^T) * (normed @ Wup^T)
 *   hidden += activated @ Wdown^T
 * hidden [T, d] is updated in place; scratch holds T * (2 d + qkv width + q_size + 3 I)
 * floats. The layer table holds, per layer, LAYER_FIELDS int64 values: the addresses of the
 * input norm weight [d], qkv bias or 0, o bias or 0, post-attention norm weight [d], key
 * cache and value cache, then for each projection (qkv, o, gate|up, down) its format
 * (fp32 panels, int4 panels with bf16 or fp32 tables, int8 panels, codebook int4 panels),
 * the address of its panels (codes), of its int4 tables or int8 or codebook scales (0 for
 * fp32), its group size (int4, codebook) and the address of its 16 codebook values (or 0).
 * A quantized gate|up is stored and gated here, as with a LoRA delta.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_kernels.h"

enum { FORMAT, CODES, TABLES, GROUP, CODEBOOK, PROJECTION_FIELDS };
enum { FP32_PANELS, INT4_BF16_TABLES, INT4_FP32_TABLES, INT8_PANELS, CODEBOOK4_PANELS };
enum { INPUT_NORM, QKV_BIAS, O_BIAS, POST_NORM, KEY_CACHE, VALUE_CACHE,
       QKV = VALUE_CACHE + 1, O = QKV + PROJECTION_FIELDS, GATE_UP = O + PROJECTION_FIELDS,
       DOWN = GATE_UP + PROJECTION_FIELDS, LAYER_FIELDS = DOWN + PROJECTION_FIELDS };

enum { QKV_LORA, O_LORA, GATE_UP_LORA, DOWN_LORA, LORA_GROUPS };

typedef struct {
    linear_f32_fn linear;
    linear_f32_gated_fn gated;
    rms_norm_f32_fn rms_norm;
    rotary_f32_fn rotary;
    paged_decode_f32_fn attend;
    lora_items_f32_fn lora;
    linear_int4_fn linear_int4;
    linear_int8_fn linear_int8;
    linear_codebook4_fn linear_codebook4;
} kernels_t;

/* One projection group's LoRA in this step: layer 0's A and B pools (a NULL a: no row's
 * adapter targets the group), the bytes from one layer's pools to the next, the group's
 * shape and the step's work items. */
typedef struct {
    const char *a, *b;
    int64_t a_layer_bytes, b_layer_bytes;
    const lora_shape_t *shape;
    const lora_items_t *items;
} group_lora_t;

typedef struct {
    int64_t rows, hidden, heads, kv_heads, head_dim, intermediate, num_layers;
    int64_t block_size, table_width, num_slots;
    float eps, scale;
} decoder_shape_t;

int layer_fields(void) { return LAYER_FIELDS; }

/* y [m, n] = x [m, k] @ W^T (+ bias) for the projection W at p (PROJECTION_FIELDS values);
 * 0, or -2 where a quantized product could not allocate its scratch. */
static int project(const kernels_t *kernels, const int64_t *p, float *y, const float *x,
                   const float *bias, int64_t m, int64_t n, int64_t k, int64_t x_row,
                   int64_t y_row, int num_threads) {
    const void *codes = (const void *)(intptr_t)p[CODES];
    const void *tables = (const void *)(intptr_t)p[TABLES];
    switch (p[FORMAT]) {
    case FP32_PANELS:
        kernels->linear(y, x, codes, bias, m, n, k, x_row, y_row, num_threads);
        return 0;
    case INT8_PANELS:
        return kernels->linear_int8(y, x, 0, codes, tables, bias, m, n, k, x_row, y_row,
                                    num_threads);
    case CODEBOOK4_PANELS:
        return kernels->linear_codebook4(y, x, 0, codes, tables, bias, m, n, k, x_row, y_row,
                                         num_threads, (const float *)(intptr_t)p[CODEBOOK],
                                         p[GROUP]);
    default:
        return kernels->linear_int4(y, x, 0, codes, tables, bias, m, n, k, x_row, y_row,
                                    num_threads, p[FORMAT] == INT4_FP32_TABLES, p[GROUP]);
    }
}

/* y [T, width] += the group's LoRA delta of layer l for x; 0, or -4 if the kernel refused. */
static int add_lora(const kernels_t *kernels, const group_lora_t *group, int64_t l, float *y,
                    const float *x) {
    if (group->a == 0) return 0;
    const int status = kernels->lora(y, x, (const float *)(group->a + l * group->a_layer_bytes),
                                     (const float *)(group->b + l * group->b_layer_bytes),
                                     group->shape, group->items);
    return status == 0 ? 0 : -4;
}

/* out [T, I] = silu(gate) * up for rows [gate | up] of gate_up [T, 2I]. */
static void silu_and_mul(float *out, const float *gate_up, int64_t rows, int64_t inter) {
    for (int64_t t = 0; t < rows; ++t) {
        const float *gate = gate_up + t * 2 * inter, *up = gate + inter;
        float *o = out + t * inter;
        _Pragma("omp simd")
        for (int64_t i = 0; i < inter; ++i) o[i] = silu_f32(gate[i]) * up[i];
    }
}

/* 0, or -3 for a cache slot outside the cache (before any layer runs: nothing is written),
 * -4 where the LoRA kernel refused its items, -2 where a quantized product could not
 * allocate its scratch, else the attention kernel's status. lora:
 * LORA_GROUPS groups, or NULL for a step without adapters. */
int decoder_layers_f32(float *hidden, const kernels_t *kernels, const int64_t *layers,
                       const decoder_shape_t *shape, const float *cos_table,
                       const float *sin_table, const int64_t *slots, const int64_t *tables,
                       const int64_t *lengths, const group_lora_t *lora, float *scratch,
                       int num_threads) {
    const int64_t rows = shape->rows, d = shape->hidden, head_dim = shape->head_dim;
    const int64_t q_size = shape->heads * head_dim, kv_size = shape->kv_heads * head_dim;
    const int64_t width = q_size + 2 * kv_size, inter = shape->intermediate;
    for (int64_t t = 0; t < rows; ++t)
        if (slots[t] < 0 || slots[t] >= shape->num_slots) return -3;
    float *normed = scratch;                   /* [T, d] */
    float *qkv = normed + rows * d;            /* [T, q_size + 2 kv_size] */
    float *attended = qkv + rows * width;      /* [T, q_size] */
    float *projected = attended + rows * q_size;  /* [T, d] */
    float *activated = projected + rows * d;   /* [T, I] */
    float *gate_up = activated + rows * inter; /* [T, 2 I], with a LoRA of gate|up */
    int status = 0;
    const decode_shape_t attention = {rows, shape->heads, shape->kv_heads, head_dim,
                                      shape->block_size, shape->table_width, width, q_size,
                                      shape->scale};
    for (int64_t l = 0; l < shape->num_layers; ++l) {
        const int64_t *w = layers + l * LAYER_FIELDS;
        float *key_cache = (float *)(intptr_t)w[KEY_CACHE];
        float *value_cache = (float *)(intptr_t)w[VALUE_CACHE];
        kernels->rms_norm(normed, 0, hidden, 0, (const float *)(intptr_t)w[INPUT_NORM], rows,
                          d, d, 0, d, d, shape->eps);
        if ((status = project(kernels, w + QKV, qkv, normed,
                              (const float *)(intptr_t)w[QKV_BIAS], rows, width, d, d, width,
                              num_threads)))
            return status;
        if (lora && (status = add_lora(kernels, &lora[QKV_LORA], l, qkv, normed))) return status;
        kernels->rotary(qkv, cos_table, sin_table, rows, shape->heads + shape->kv_heads,
                        head_dim, width);
        for (int64_t t = 0; t < rows; ++t) {
            memcpy(key_cache + slots[t] * kv_size, qkv + t * width + q_size,
                   kv_size * sizeof(float));
            memcpy(value_cache + slots[t] * kv_size, qkv + t * width + q_size + kv_size,
                   kv_size * sizeof(float));
        }
        status = kernels->attend(attended, qkv, key_cache, value_cache, tables, lengths,
                                 &attention, num_threads);
        if (status != 0) return status;
        if ((status = project(kernels, w + O, projected, attended,
                              (const float *)(intptr_t)w[O_BIAS], rows, d, q_size, q_size, d,
                              num_threads)))
            return status;
        if (lora && (status = add_lora(kernels, &lora[O_LORA], l, projected, attended)))
            return status;
        kernels->rms_norm(normed, hidden, projected, hidden,
                          (const float *)(intptr_t)w[POST_NORM], rows, d, d, d, d, d,
                          shape->eps);
        if ((lora && lora[GATE_UP_LORA].a) || w[GATE_UP + FORMAT] != FP32_PANELS) {
            /* a delta goes in before the gate; quantized products have no gated form */
            if ((status = project(kernels, w + GATE_UP, gate_up, normed, 0, rows, 2 * inter, d,
                                  d, 2 * inter, num_threads)))
                return status;
            if (lora && (status = add_lora(kernels, &lora[GATE_UP_LORA], l, gate_up, normed)))
                return status;
            silu_and_mul(activated, gate_up, rows, inter);
        } else {
            kernels->gated(activated, normed, (const float *)(intptr_t)w[GATE_UP + CODES], rows,
                           inter, d, d, inter, num_threads);
        }
        if ((status = project(kernels, w + DOWN, projected, activated, 0, rows, d, inter, inter,
                              d, num_threads)))
            return status;
        if (lora && (status = add_lora(kernels, &lora[DOWN_LORA], l, projected, activated)))
            return status;
        for (int64_t i = 0; i < rows * d; ++i) hidden[i] += projected[i];
    }
    return 0;
}
