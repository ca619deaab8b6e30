// logp.c: sums of response-token log-probs, several sequences packed into
// one forward with per-record attention boundaries (no padding).
#include "logp.h"

#include <stdlib.h>

int pq_logp_seqs(const PqModel *m, PqLogpSeq *seqs, int n, int batch_tokens, PqErr *e) {
    for (int s = 0; s < n; s++) {
        if (seqs[s].prompt_len < 1 || seqs[s].prompt_len >= seqs[s].len) {
            pq_err(e, "sequence %d: prompt length %d of %d tokens leaves no response to score (or no prompt)", s,
                   seqs[s].prompt_len, seqs[s].len);
            return -1;
        }
    }
    int rc = 0;
    int cap = 0;
    int32_t *ids = NULL, *pos = NULL, *tg = NULL;
    float *lp = NULL;
    for (int s0 = 0; s0 < n && !rc;) {
        // The last token is never an input whose prediction is needed: a
        // sequence of len tokens takes len - 1 positions.
        int N = seqs[s0].len - 1, s1 = s0 + 1;
        while (s1 < n && N + seqs[s1].len - 1 <= batch_tokens) N += seqs[s1++].len - 1;
        if (N > cap) {
            cap = N;
            ids = pq_xrealloc(ids, (size_t)cap * sizeof *ids);
            pos = pq_xrealloc(pos, (size_t)cap * sizeof *pos);
            tg = pq_xrealloc(tg, (size_t)cap * sizeof *tg);
            lp = pq_xrealloc(lp, (size_t)cap * sizeof *lp);
        }
        int k = 0;
        for (int s = s0; s < s1; s++) {
            const PqLogpSeq *q = &seqs[s];
            for (int i = 0; i < q->len - 1; i++, k++) {
                ids[k] = q->ids[i];
                pos[k] = i;
                tg[k] = i + 1 >= q->prompt_len ? q->ids[i + 1] : -1;
            }
        }
        rc = pq_model_logp(m, ids, pos, tg, N, lp, e);
        k = 0;
        for (int s = s0; s < s1 && !rc; s++) {
            PqLogpSeq *q = &seqs[s];
            double sum = 0;
            int c = 0;
            for (int i = 0; i < q->len - 1; i++, k++) {
                if (tg[k] < 0) continue;
                sum += lp[k];
                if (q->token_logp) q->token_logp[c] = lp[k];
                c++;
            }
            q->sum = sum;
            q->count = c;
        }
        s0 = s1;
    }
    free(ids);
    free(pos);
    free(tg);
    free(lp);
    return rc;
}
