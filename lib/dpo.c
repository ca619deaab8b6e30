// dpo.c: DPO losses and their gradients w.r.t. the policy log-probs (see dpo.h).
#include "dpo.h"

#include <math.h>
#include <string.h>

// log sigmoid(x) without overflow.
static double log_sigmoid(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
static double sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }

double pq_dpo_loss(const PqDpoCfg *cfg, const PqDpoPair *p, double *dpc, double *dpr) {
    double c = p->pc - p->rc, r = p->pr - p->rr, b = cfg->beta;
    double loss = 0, g = 0; // g = d loss / d (c - r) for sigmoid/hinge
    switch (cfg->loss) {
    case PQ_LOSS_IPO: {
        double nc = p->nc > 0 ? p->nc : 1, nr = p->nr > 0 ? p->nr : 1;
        double d = c / nc - r / nr - 1 / (2 * b);
        loss = d * d;
        *dpc = 2 * d / nc;
        *dpr = -2 * d / nr;
        break;
    }
    case PQ_LOSS_HINGE: {
        double z = 1 - b * (c - r);
        loss = z > 0 ? z : 0;
        g = z > 0 ? -b : 0;
        *dpc = g;
        *dpr = -g;
        break;
    }
    default: {
        double e = cfg->label_smoothing, x = b * (c - r);
        loss = -(1 - e) * log_sigmoid(x) - e * log_sigmoid(-x);
        // d/dx -log sigmoid(x) = -(1 - sigmoid(x)) = -sigmoid(-x)
        g = b * (-(1 - e) * sigmoid(-x) + e * sigmoid(x));
        *dpc = g;
        *dpr = -g;
        break;
    }
    }
    if (cfg->sft_weight != 0) {
        double nc = cfg->sft_sum || p->nc <= 0 ? 1 : p->nc;
        loss += cfg->sft_weight * (-p->pc / nc);
        *dpc += -cfg->sft_weight / nc;
    }
    return loss;
}

int pq_dpo_loss_parse(const char *name) {
    if (strcmp(name, "sigmoid") == 0) return PQ_LOSS_SIGMOID;
    if (strcmp(name, "ipo") == 0) return PQ_LOSS_IPO;
    if (strcmp(name, "hinge") == 0) return PQ_LOSS_HINGE;
    return -1;
}

const char *pq_dpo_loss_name(int loss) {
    return loss == PQ_LOSS_IPO ? "ipo" : loss == PQ_LOSS_HINGE ? "hinge" : "sigmoid";
}

void pq_dpo_metrics_add(PqDpoMetrics *m, const PqDpoCfg *cfg, const PqDpoPair *p, double loss) {
    double c = p->pc - p->rc, r = p->pr - p->rr;
    m->n += 1;
    m->loss += loss;
    m->chosen += cfg->beta * c;
    m->rejected += cfg->beta * r;
    m->margins += cfg->beta * (c - r);
    m->accuracies += c > r ? 1 : 0;
    m->logps_chosen += p->pc;
    m->logps_rejected += p->pr;
}
