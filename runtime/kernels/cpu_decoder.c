/*
 * An fp32 decode step's decoder layers on a CPU as one call.
 *
 * Run layer by layer from Python, a decoder layer is a dozen module calls, views and
 * kernel calls: about 0.2 ms of interpreter work a layer, 5-9 ms of a 135M-parameter
 * model's 30-layer step whatever the batch. Here the same kernels run in the same order
 * (`cpu_linear.c`, `cpu_layer_ops.c`, `cpu_attention.c`: their addresses come from
 * `cpu_decoder.py`), so the result is the layer-by-layer path's bit for bit; only the
 * copies into the KV cache are this file's own.
 *
 * Per layer, over T rows of width d (q_size = H * D, kv_size = Hkv * D):
 *   normed = rms_norm(hidden)                  qkv = normed @ Wqkv^T (+ b)
 *   rotary(q and k of qkv)                     key/value of row t -> cache slot slots[t]
 *   attended = paged decode of q               projected = attended @ Wo^T (+ b)
 *   hidden += projected; normed = rms_norm(hidden)
 *   activated = silu(normed @ Wgate^T) * (normed @ Wup^T)
 *   hidden += activated @ Wdown^T
 * hidden [T, d] is updated in place; scratch holds T * (2 d + qkv width + q_size + I)
 * floats. The layer table holds, per layer, the addresses of: input norm weight [d], qkv
 * panels, qkv bias or 0, o panels, o bias or 0, post-attention norm weight [d], gate|up
 * panels, down panels, key cache, value cache (LAYER_FIELDS int64 values).
 */
#include <stdint.h>
#include <string.h>

#include "cpu_kernels.h"

enum { INPUT_NORM, QKV, QKV_BIAS, O, O_BIAS, POST_NORM, GATE_UP, DOWN, KEY_CACHE, VALUE_CACHE,
       LAYER_FIELDS };

typedef struct {
    linear_f32_fn linear;
    linear_f32_gated_fn gated;
    rms_norm_f32_fn rms_norm;
    rotary_f32_fn rotary;
    paged_decode_f32_fn attend;
} kernels_t;

typedef struct {
    int64_t rows, hidden, heads, kv_heads, head_dim, intermediate, num_layers;
    int64_t block_size, table_width, num_slots;
    float eps, scale;
} decoder_shape_t;

int layer_fields(void) { return LAYER_FIELDS; }

/* 0, or -3 for a cache slot outside the cache, else the attention kernel's status (before
 * any layer runs for a bad slot: nothing is written). */
int decoder_layers_f32(float *hidden, const kernels_t *kernels, const int64_t *layers,
                       const decoder_shape_t *shape, const float *cos_table,
                       const float *sin_table, const int64_t *slots, const int64_t *tables,
                       const int64_t *lengths, float *scratch, int num_threads) {
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
    const decode_shape_t attention = {rows, shape->heads, shape->kv_heads, head_dim,
                                      shape->block_size, shape->table_width, width, q_size,
                                      shape->scale};
    for (int64_t l = 0; l < shape->num_layers; ++l) {
        const int64_t *w = layers + l * LAYER_FIELDS;
        float *key_cache = (float *)(intptr_t)w[KEY_CACHE];
        float *value_cache = (float *)(intptr_t)w[VALUE_CACHE];
        kernels->rms_norm(normed, 0, hidden, 0, (const float *)(intptr_t)w[INPUT_NORM], rows,
                          d, d, 0, d, d, shape->eps);
        kernels->linear(qkv, normed, (const float *)(intptr_t)w[QKV],
                        (const float *)(intptr_t)w[QKV_BIAS], rows, width, d, d, width,
                        num_threads);
        kernels->rotary(qkv, cos_table, sin_table, rows, shape->heads + shape->kv_heads,
                        head_dim, width);
        for (int64_t t = 0; t < rows; ++t) {
            memcpy(key_cache + slots[t] * kv_size, qkv + t * width + q_size,
                   kv_size * sizeof(float));
            memcpy(value_cache + slots[t] * kv_size, qkv + t * width + q_size + kv_size,
                   kv_size * sizeof(float));
        }
        const int status = kernels->attend(attended, qkv, key_cache, value_cache, tables,
                                           lengths, &attention, num_threads);
        if (status != 0) return status;
        kernels->linear(projected, attended, (const float *)(intptr_t)w[O],
                        (const float *)(intptr_t)w[O_BIAS], rows, d, q_size, q_size, d,
                        num_threads);
        kernels->rms_norm(normed, hidden, projected, hidden,
                          (const float *)(intptr_t)w[POST_NORM], rows, d, d, d, d, d,
                          shape->eps);
        kernels->gated(activated, normed, (const float *)(intptr_t)w[GATE_UP], rows, inter, d,
                       d, inter, num_threads);
        kernels->linear(projected, activated, (const float *)(intptr_t)w[DOWN], 0, rows, d,
                        inter, inter, d, num_threads);
        for (int64_t i = 0; i < rows * d; ++i) hidden[i] += projected[i];
    }
    return 0;
}
