// lora.h: LoRA adapters beyond what model.h builds and loads: PEFT's
// initialisation (A Kaiming-uniform, B zero, seeded) and writing an adapter
// directory in PEFT's format (adapter_config.json +
// adapter_model.safetensors), atomically, with optional extra files (the
// trainer's state) in the same directory.
#ifndef PQ_LORA_H
#define PQ_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

// A ~ U(-1/sqrt(in), 1/sqrt(in)) as PEFT's kaiming_uniform_(a=sqrt(5)),
// B = 0; A drawn from a generator seeded with seed, layer by layer.
void pq_lora_init_peft(PqLora *lora, const PqConfig *cfg, uint64_t seed);

// PEFT's tensor name of A (ab 0) or B (ab 1) of linear j of layer l:
// base_model.model.model.layers.<l>.self_attn.q_proj.lora_A.weight
void pq_lora_tensor_name(int l, int j, int ab, char *out, size_t n);

// Writes values laid out as lora->params (the parameters themselves, their
// gradients, ...) to path as safetensors (f32) under PEFT's tensor names.
int pq_lora_write_tensors(const PqLora *lora, const PqConfig *cfg, const float *values, const char *path, PqErr *e);

// An extra file written into the adapter directory with it.
typedef struct PqLoraExtra {
    const char *name;
    const void *data;
    size_t len;
} PqLoraExtra;

// Writes dir (adapter_config.json with base_model_name_or_path = base, the
// dropout given; adapter_model.safetensors in f32; the extras) into a
// temporary directory next to it, then renames it into place: readers see
// the old adapter or the new one, never a mix. 0 or -1 with a message.
int pq_lora_save(const PqLora *lora, const PqConfig *cfg, const char *base, float dropout, const char *dir,
                 const PqLoraExtra *extras, int n_extras, PqErr *e);

// Writes out_dir as a Hugging Face model directory: every tensor of m's
// safetensors in dtype, the adapted linears replaced by W + scale * B A;
// config.json (torch_dtype set), tokenizer and other non-weight files
// copied from m's directory. Tensors are produced one at a time; the
// directory appears atomically (temporary directory + rename).
int pq_lora_merge(const PqModel *m, const PqLora *lora, PqDtype dtype, const char *out_dir, PqErr *e);

#endif
