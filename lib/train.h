// train.h: LoRA training through a frozen base model: the forward pass that
// keeps what the backward needs (every layer's activations, or with
// activation checkpointing only each layer's input, recomputing one layer at
// a time), the backward to the LoRA parameters, and one DPO micro-batch of
// packed pairs (chosen and rejected of every pair in one batch of tokens).
#ifndef PQ_TRAIN_H
#define PQ_TRAIN_H

#include <stdint.h>

#include "dpo.h"
#include "model.h"


typedef struct PqTrainer {
    const PqModel *m;
    PqLora *lora;      // trained in place (not owned)
    float *grads;      // (lora->n_params) gradients, same layout as lora->params
    PqLoraAB *gab;     // [L * PQ_NLIN] pointers into grads
    int checkpoint;    // 1: keep only layer inputs, recompute in the backward (the current choice)
    int checkpoint_auto; // choose at each growth of the buffers: keep every layer's activations when
                         // they fit in the free memory (pq_dev_free_bytes), else checkpoint
    float dropout;     // LoRA dropout on the adapter's input (PEFT's lora_dropout)
    int share_prompt;  // 1 (default): a pair's common prompt goes through the model once (where the
                       // backend has attention2)
    uint64_t drop_seed; // seed of the current forward's dropout masks
    // what the forward keeps, sized for cap tokens
    int cap, N;
    size_t dev_bytes;  // what those buffers take in backend memory (pq_trainer_bytes(cap) is exactly this)
    const int32_t *pos, *targets; // of the current batch: pos = d_pos (backend), targets (caller's host memory)
    const int32_t *ka0, *ka1, *kb0; // attention2's key ranges (backend) when pairs share prompts, else NULL
    int32_t *d_k;                 // (3N) their backend copy
    float *xs;         // (L+1, N, C) residual stream at each layer's input, and the last
    PqLayerActs **acts; // [1] with checkpointing, else [L]
    float *hf, *rstdf;       // (N,C), (N) final norm
    int M;                   // rows with a target: only they go through the LM head
    int32_t *rows, *tgc;     // (M) their indices and targets (host)
    int32_t *d_ids, *d_pos, *d_tgc; // (N), (N), (M) backend copies of ids, pos and tgc
    float *h_lp;             // (M) host staging of the compact log-probs and their gradients
    float *hc, *lse, *logpc; // (M,C), (M), (M) their hidden states, log-sum-exp, logps
    float *dx, *dh, *dscr; // (N,C), (N, max(C,QD,H)) x2 backward scratch (kept: no device
                           // allocation per backward)
    float *dq, *dk, *dv, *dxa, *dgate, *dup;
} PqTrainer;

// m: the frozen base; lora: the adapter trained (with its targets and scale);
// checkpoint: PQ_CKPT_ON, _OFF or _AUTO.
enum { PQ_CKPT_OFF = 0, PQ_CKPT_ON = 1, PQ_CKPT_AUTO = -1 };
PqTrainer *pq_trainer_build(const PqModel *m, PqLora *lora, int checkpoint, float dropout);
// Bytes of the buffers the trainer holds for a batch of N tokens, with every
// layer's activations kept (checkpoint 0) or one layer's (1).
size_t pq_trainer_bytes(const PqConfig *c, const PqLora *lora, int N, int checkpoint);
void pq_trainer_free(PqTrainer *t);
void pq_trainer_zero_grad(PqTrainer *t);

// Packed batch: ids (N), pos (N) as in ops.h, targets (N) (-1: none) ->
// logp (N) (0 where no target). a0, a1, b0 (N): the key ranges of each
// token as attention2 of ops_grad.h takes them (NULL: records packed one
// after the other, as pos says). drop_seed keys the dropout masks (ignored
// when dropout is 0 or train is 0); train 0: no dropout (evaluation).
void pq_train_forward(PqTrainer *t, const int32_t *ids, const int32_t *pos, const int32_t *a0, const int32_t *a1,
                      const int32_t *b0, const int32_t *targets, int N, uint64_t drop_seed, int train, float *logp);
// 1 when the backend has attention2 (prompts can be shared).
int pq_train_can_share(void);
// dlogp (N) -> t->grads += d (sum_i dlogp_i logp_i) / d LoRA params, for the
// batch of the last pq_train_forward.
void pq_train_backward(PqTrainer *t, const float *dlogp);

// A pair as training keeps it: the two tokenised sequences and the
// reference log-probs.
typedef struct PqTrainPair {
    int32_t *ids[2]; // chosen, rejected (prompt + response)
    int len[2], prompt_len[2];
    double ref[2];   // reference logps (0 when reference-free)
} PqTrainPair;
void pq_train_pair_free(PqTrainPair *p);

// One micro-batch of n pairs packed into one batch (with share_prompt, the
// prompt tokens common to chosen and rejected once, both responses
// attending to them): forward, the DPO loss of
// each pair, and (when backward) the backward of sum(loss) * grad_scale.
// Adds every pair's metrics to *met and to *tokens the tokens of both
// sequences of every pair (a shared prompt counted twice).
// Returns 0, or -1 when a loss is not finite (nothing accumulated then).
int pq_train_dpo_micro(PqTrainer *t, const PqDpoCfg *cfg, PqTrainPair *const *pairs, int n, double grad_scale,
                       uint64_t drop_seed, int backward, PqDpoMetrics *met, long *tokens);

#endif
