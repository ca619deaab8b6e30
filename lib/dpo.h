// dpo.h: the DPO losses of method.md §5 (sigmoid with label smoothing, ipo,
// hinge) plus the optional SFT term, their gradients with respect to the
// policy's summed log-probs, and the metrics the common trainers report.
#ifndef PQ_DPO_H
#define PQ_DPO_H

enum { PQ_LOSS_SIGMOID = 0, PQ_LOSS_IPO, PQ_LOSS_HINGE };

typedef struct PqDpoCfg {
    int loss;               // PQ_LOSS_*
    double beta;            // 0.1
    double label_smoothing; // e of cDPO (sigmoid only), 0
    double sft_weight;      // weight of the chosen response's NLL, 0 = none
    int sft_sum;            // 0: NLL is the mean per chosen token, 1: the sum
} PqDpoCfg;

// One pair: policy and reference summed log-probs and response lengths (tokens).
typedef struct PqDpoPair {
    double pc, pr; // policy logp(chosen), logp(rejected)
    double rc, rr; // reference logps (0 and 0 when reference-free)
    int nc, nr;    // response tokens of chosen and rejected (>= 1)
} PqDpoPair;

// Loss of one pair; *dpc, *dpr get d loss / d pc and d loss / d pr.
double pq_dpo_loss(const PqDpoCfg *cfg, const PqDpoPair *p, double *dpc, double *dpr);
// Parses "sigmoid", "ipo", "hinge"; -1 if unknown.
int pq_dpo_loss_parse(const char *name);
const char *pq_dpo_loss_name(int loss);

// Sums of the per-pair metrics; divide by n for the means.
typedef struct PqDpoMetrics {
    double n;
    double loss, chosen, rejected, margins, accuracies, logps_chosen, logps_rejected;
} PqDpoMetrics;
void pq_dpo_metrics_add(PqDpoMetrics *m, const PqDpoCfg *cfg, const PqDpoPair *p, double loss);

#endif
