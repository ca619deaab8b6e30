// test-dpo.c: the DPO losses of dpo.c against their definitions (method.md
// §5) evaluated independently here in long double, and their gradients
// against central finite differences; the step-0 value ln 2; the metrics.
#include <math.h>
#include <stdio.h>

#include "dpo.h"

static int failures;

static void expect(const char *what, double got, double want, double tol) {
    if (!(fabs(got - want) <= tol * (1 + fabs(want)))) {
        printf("FAIL %s: got %.12g, want %.12g\n", what, got, want);
        failures++;
    }
}

// The definitions, written plainly.
static long double ref_loss(const PqDpoCfg *c, const PqDpoPair *p) {
    long double cc = (long double)p->pc - p->rc, rr = (long double)p->pr - p->rr, b = c->beta, l;
    if (c->loss == PQ_LOSS_IPO) {
        long double d = cc / p->nc - rr / p->nr - 1 / (2 * b);
        l = d * d;
    } else if (c->loss == PQ_LOSS_HINGE) {
        l = fmaxl(0, 1 - b * (cc - rr));
    } else {
        long double x = b * (cc - rr), e = c->label_smoothing;
        l = -(1 - e) * logl(1 / (1 + expl(-x))) - e * logl(1 / (1 + expl(x)));
    }
    if (c->sft_weight) l += c->sft_weight * -(long double)p->pc / (c->sft_sum ? 1 : p->nc);
    return l;
}

int main(void) {
    PqDpoPair pairs[] = {
        {-20, -25, -21, -24, 7, 9}, {-30, -12, -28, -13, 11, 4}, {-5.5, -5.5, -5.5, -5.5, 3, 3}, {-100, -40, -60, -70, 40, 20}};
    double betas[] = {0.01, 0.1, 0.5};
    for (int loss = 0; loss < 3; loss++)
        for (int bi = 0; bi < 3; bi++)
            for (int ls = 0; ls < 2; ls++)
                for (int sft = 0; sft < 3; sft++)
                    for (size_t k = 0; k < sizeof pairs / sizeof *pairs; k++) {
                        if (ls && loss != PQ_LOSS_SIGMOID) continue;
                        PqDpoCfg c = {loss, betas[bi], ls ? 0.15 : 0, sft ? 0.7 : 0, sft == 2};
                        PqDpoPair p = pairs[k];
                        double dpc, dpr;
                        double l = pq_dpo_loss(&c, &p, &dpc, &dpr);
                        char what[128];
                        snprintf(what, sizeof what, "%s beta %g ls %d sft %d pair %zu", pq_dpo_loss_name(loss), c.beta,
                                 ls, sft, k);
                        expect(what, l, (double)ref_loss(&c, &p), 1e-12);
                        // finite differences in the policy logps (hinge: away from its kink)
                        double z = 1 - c.beta * ((p.pc - p.rc) - (p.pr - p.rr));
                        if (loss == PQ_LOSS_HINGE && fabs(z) < 1e-3) continue;
                        double h = 1e-4, d1, d2;
                        PqDpoPair q = p;
                        q.pc += h;
                        double lp = pq_dpo_loss(&c, &q, &d1, &d2);
                        q.pc -= 2 * h;
                        double lm = pq_dpo_loss(&c, &q, &d1, &d2);
                        expect(what, dpc, (lp - lm) / (2 * h), 1e-6);
                        q = p;
                        q.pr += h;
                        lp = pq_dpo_loss(&c, &q, &d1, &d2);
                        q.pr -= 2 * h;
                        lm = pq_dpo_loss(&c, &q, &d1, &d2);
                        expect(what, dpr, (lp - lm) / (2 * h), 1e-6);
                    }
    // step 0: policy == reference -> ln 2, rewards 0
    PqDpoCfg c = {PQ_LOSS_SIGMOID, 0.1, 0, 0, 0};
    PqDpoPair p0 = {-12.5, -30.25, -12.5, -30.25, 5, 9};
    double a, b;
    expect("step-0 loss", pq_dpo_loss(&c, &p0, &a, &b), log(2.0), 1e-15);
    PqDpoMetrics m = {0};
    pq_dpo_metrics_add(&m, &c, &p0, log(2.0));
    PqDpoPair p1 = {-10, -20, -11, -19, 5, 9}; // c = 1, r = -1
    pq_dpo_metrics_add(&m, &c, &p1, 0.5);
    expect("rewards/chosen", m.chosen / m.n, 0.05, 1e-12);
    expect("rewards/rejected", m.rejected / m.n, -0.05, 1e-12);
    expect("rewards/margins", m.margins / m.n, 0.1, 1e-12);
    expect("rewards/accuracies", m.accuracies / m.n, 0.5, 1e-12);
    expect("logps/chosen", m.logps_chosen / m.n, -11.25, 1e-12);
    expect("logps/rejected", m.logps_rejected / m.n, -25.125, 1e-12);
    if (pq_dpo_loss_parse("ipo") != PQ_LOSS_IPO || pq_dpo_loss_parse("nope") != -1) {
        printf("FAIL loss names\n");
        failures++;
    }
    printf(failures ? "%d failures\n" : "dpo losses ok\n", failures);
    return failures != 0;
}
