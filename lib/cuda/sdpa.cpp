// sdpa.cpp: cuDNN's fused flash attention through cudnn-frontend's graph API
// (see sdpa.h): a graph per shape (segments, padded lengths, heads, mask),
// built once and kept; libcudnn opened with dlopen at the first call, so a
// machine without cuDNN runs the other attention paths. Host code only
// (g++): the frontend is C++17 and header-only (MIT; installed by
// scripts/setup under .deps/, found by the Makefile).
#include "sdpa.h"

#include <stdio.h>
#include <string.h>

#ifndef PQ_HAVE_CUDNN_FE

extern "C" int pq_sdpa_validate(const PqSdpaCall *, int, char *err, size_t errsz) {
    snprintf(err, errsz, "built without the cudnn-frontend headers (scripts/setup installs them)");
    return -1;
}
extern "C" int pq_sdpa_forward(const PqSdpaCall *, void *, float *, const void *, const void *, const void *,
                               char *err, size_t errsz) {
    snprintf(err, errsz, "built without the cudnn-frontend headers (scripts/setup installs them)");
    return -1;
}
extern "C" int pq_sdpa_backward(const PqSdpaCall *, void *, void *, void *, const void *, const void *, const void *,
                                const void *, const void *, const float *, char *err, size_t errsz) {
    snprintf(err, errsz, "built without the cudnn-frontend headers (scripts/setup installs them)");
    return -1;
}

extern "C" int pq_sdpa_paged_validate(const PqSdpaPagedCall *, char *err, size_t errsz) {
    snprintf(err, errsz, "built without the cudnn-frontend headers (scripts/setup installs them)");
    return -1;
}
extern "C" int pq_sdpa_paged_forward(const PqSdpaPagedCall *, void *, const void *, const void *, const void *,
                                     char *err, size_t errsz) {
    snprintf(err, errsz, "built without the cudnn-frontend headers (scripts/setup installs them)");
    return -1;
}

#else

#include <dlfcn.h>

#include <map>
#include <memory>
#include <tuple>
#include <unordered_map>

#include <cudnn_frontend.h>

extern "C" {
#include "ops.h"
}

namespace fe = cudnn_frontend;
extern cudaStream_t pq_cuda_stream; // backend.cu: the backend's stream (common.cuh)
// the frontend's handle on libcudnn when it loads it dynamically
namespace cudnn_frontend {
void *cudnn_dlhandle = nullptr;
}

namespace {

enum : int64_t { U_Q = 1, U_K, U_V, U_O, U_STATS, U_DO, U_DQ, U_DK, U_DV, U_SEQ_Q, U_SEQ_K, U_OFF_Q = 20 };
enum : int64_t { U_PT_K = 40, U_PT_V }; // the paged graph's page tables

typedef std::tuple<int, int, int, int, int, int, int, int, int, float> Key; // bwd, B, sq, sk, NH, KVH, HS, causal, lb, scale
struct Plan {
    std::shared_ptr<fe::graph::Graph> g;
    int64_t ws = 0;
};

int state = 0; // 0 not tried, 1 ready, -1 unusable
char state_why[256];
cudnnHandle_t handle;
cudaStream_t handle_stream; // the stream handle is bound to (0 as created)
std::map<Key, Plan> plans;
void *ws_buf = nullptr;
size_t ws_cap = 0;

int open_cudnn() {
    if (state) return state;
    state = -1;
    const char *names[] = {"libcudnn.so.9", "libcudnn.so"};
    for (const char *n : names)
        if ((fe::cudnn_dlhandle = dlopen(n, RTLD_NOW | RTLD_GLOBAL))) break;
    if (!fe::cudnn_dlhandle) {
        const char *e = dlerror();
        snprintf(state_why, sizeof state_why, "cuDNN not found (%s)", e ? e : "libcudnn.so.9");
        return state;
    }
    try {
        if (fe::detail::get_backend_version() < 90000) {
            snprintf(state_why, sizeof state_why, "cuDNN %ld is older than 9.0",
                     (long)fe::detail::get_backend_version());
            return state;
        }
        cudnnStatus_t st = fe::detail::create_handle(&handle);
        if (st != CUDNN_STATUS_SUCCESS) {
            snprintf(state_why, sizeof state_why, "cudnnCreate failed (status %d)", (int)st);
            return state;
        }
    } catch (std::exception &e) {
        snprintf(state_why, sizeof state_why, "cuDNN: %s", e.what());
        return state;
    }
    state = 1;
    return state;
}

typedef std::shared_ptr<fe::graph::Tensor_attributes> T;

T offsets(fe::graph::Graph &g, const char *name, int64_t uid, int B) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({B + 1, 1, 1, 1})
                        .set_stride({1, 1, 1, 1})
                        .set_data_type(fe::DataType_t::INT64));
}

// a (B, H, S, HS) view of packed rows of H heads (token-major), ragged by its offsets
void rows(const T &t, const char *name, int64_t uid, int B, int H, int S, int HS, const T &off) {
    t->set_name(name)
        .set_uid(uid)
        .set_dim({B, H, S, HS})
        .set_stride({(int64_t)S * H * HS, HS, (int64_t)H * HS, 1})
        .set_data_type(fe::DataType_t::BFLOAT16)
        .set_ragged_offset(off);
}
T input_rows(fe::graph::Graph &g, const char *name, int64_t uid, int B, int H, int S, int HS, const T &off) {
    T t = g.tensor(fe::graph::Tensor_attributes());
    rows(t, name, uid, B, H, S, HS, off);
    return t;
}
// the (B) sequence lengths of one side (int32, device)
T lengths(fe::graph::Graph &g, const char *name, int64_t uid, int B) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({B, 1, 1, 1})
                        .set_stride({1, 1, 1, 1})
                        .set_data_type(fe::DataType_t::INT32));
}
T stats_tensor(const T &t, int B, int NH, int S) {
    t->set_name("stats").set_uid(U_STATS).set_dim({B, NH, S, 1}).set_stride({(int64_t)NH * S, S, 1, 1}).set_data_type(
        fe::DataType_t::FLOAT);
    return t;
}

template <typename A> void masks(A &a, const PqSdpaCall *c, const T &sq, const T &sk) {
    a.set_attn_scale(c->scale).set_padding_mask(true).set_seq_len_q(sq).set_seq_len_kv(sk);
    if (c->causal) {
        a.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
        if (c->left_bound > 0) a.set_diagonal_band_left_bound(c->left_bound);
    }
}

// The graph of a call (forward or backward), not yet lowered to cuDNN; sm > 0: for that GPU
// generation instead of the current device's (validation without a device).
std::shared_ptr<fe::graph::Graph> graph_of(const PqSdpaCall *c, int bwd, int sm = 0) {
    auto g = std::make_shared<fe::graph::Graph>();
    if (sm > 0) g->set_sm_version(sm).set_sm_count(132);
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    int B = c->B;
    T oq = offsets(*g, "off_q", U_OFF_Q, B), ok = offsets(*g, "off_k", U_OFF_Q + 1, B);
    T ov = offsets(*g, "off_v", U_OFF_Q + 2, B), oo = offsets(*g, "off_o", U_OFF_Q + 3, B);
    T q = input_rows(*g, "q", U_Q, B, c->NH, c->smax_q, c->HS, oq);
    T k = input_rows(*g, "k", U_K, B, c->KVH, c->smax_k, c->HS, ok);
    T v = input_rows(*g, "v", U_V, B, c->KVH, c->smax_k, c->HS, ov);
    T sq = lengths(*g, "seq_q", U_SEQ_Q, B), sk = lengths(*g, "seq_k", U_SEQ_K, B);
    if (!bwd) {
        auto a = fe::graph::SDPA_attributes().set_name("pq_sdpa").set_generate_stats(true);
        masks(a, c, sq, sk);
        auto [o, st] = g->sdpa(q, k, v, a);
        rows(o, "o", U_O, B, c->NH, c->smax_q, c->HS, oo);
        o->set_output(true);
        stats_tensor(st, B, c->NH, c->smax_q)->set_output(true);
    } else {
        T od = offsets(*g, "off_do", U_OFF_Q + 4, B), oqd = offsets(*g, "off_dq", U_OFF_Q + 5, B);
        T okd = offsets(*g, "off_dk", U_OFF_Q + 6, B), ovd = offsets(*g, "off_dv", U_OFF_Q + 7, B);
        T o = input_rows(*g, "o", U_O, B, c->NH, c->smax_q, c->HS, oo);
        T dO = input_rows(*g, "do", U_DO, B, c->NH, c->smax_q, c->HS, od);
        T st = stats_tensor(g->tensor(fe::graph::Tensor_attributes()), B, c->NH, c->smax_q);
        auto a = fe::graph::SDPA_backward_attributes().set_name("pq_sdpa_bwd");
        masks(a, c, sq, sk);
        auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dO, st, a);
        rows(dq, "dq", U_DQ, B, c->NH, c->smax_q, c->HS, oqd);
        rows(dk, "dk", U_DK, B, c->KVH, c->smax_k, c->HS, okd);
        rows(dv, "dv", U_DV, B, c->KVH, c->smax_k, c->HS, ovd);
        dq->set_output(true);
        dk->set_output(true);
        dv->set_output(true);
    }
    return g;
}

// The graph of a paged call (see PqSdpaPagedCall): ragged query rows, the pool as K and V containers read
// through one page table a segment, causal from the bottom right.
std::shared_ptr<fe::graph::Graph> paged_graph_of(const PqSdpaPagedCall *c, int sm = 0) {
    auto g = std::make_shared<fe::graph::Graph>();
    if (sm > 0) g->set_sm_version(sm).set_sm_count(132);
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    int B = c->B;
    int64_t blk = (int64_t)c->BT * c->KVH * c->HS; // elements of a block: BT rows of KVH heads
    T oq = offsets(*g, "off_q", U_OFF_Q, B), oo = offsets(*g, "off_o", U_OFF_Q + 3, B);
    T q = input_rows(*g, "q", U_Q, B, c->NH, c->smax_q, c->HS, oq);
    auto container = [&](const char *name, int64_t uid) {
        return g->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim({c->NB, c->KVH, c->BT, c->HS})
                             .set_stride({blk, c->HS, (int64_t)c->KVH * c->HS, 1})
                             .set_data_type(fe::DataType_t::BFLOAT16));
    };
    auto table = [&](const char *name, int64_t uid) {
        return g->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim({B, 1, c->maxblk, 1})
                             .set_stride({c->maxblk, c->maxblk, 1, 1})
                             .set_data_type(fe::DataType_t::INT32));
    };
    T k = container("k_pool", U_K), v = container("v_pool", U_V);
    auto a = fe::graph::SDPA_attributes()
                 .set_name("pq_sdpa_paged")
                 .set_generate_stats(false)
                 .set_attn_scale(c->scale)
                 .set_padding_mask(true)
                 .set_seq_len_q(lengths(*g, "seq_q", U_SEQ_Q, B))
                 .set_seq_len_kv(lengths(*g, "seq_k", U_SEQ_K, B))
                 .set_paged_attention_k_table(table("table_k", U_PT_K))
                 .set_paged_attention_v_table(table("table_v", U_PT_V))
                 .set_paged_attention_max_seq_len_kv(c->maxblk * c->BT)
                 .set_diagonal_alignment(fe::DiagonalAlignment_t::BOTTOM_RIGHT)
                 .set_diagonal_band_right_bound(0);
    if (c->left_bound > 0) a.set_diagonal_band_left_bound(c->left_bound);
    auto [o, st] = g->sdpa(q, k, v, a);
    (void)st;
    rows(o, "o", U_O, B, c->NH, c->smax_q, c->HS, oo);
    o->set_output(true);
    return g;
}

// Lowers a graph to a plan for this device: 0, or -1 with cuDNN's reason in msg.
int lower(Plan &p, const std::shared_ptr<fe::graph::Graph> &g, std::string &msg) {
    fe::error_t e = g->validate();
    if (e.is_good()) e = g->build_operation_graph(handle);
    if (e.is_good()) e = g->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK});
    if (e.is_good()) e = g->check_support(handle);
    if (e.is_good()) e = g->build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
    if (e.is_good()) e = g->get_workspace_size(p.ws);
    if (!e.is_good()) {
        msg = e.get_message();
        return -1;
    }
    p.g = g;
    return 0;
}

// The plan of key's shape in cache, the graph made by make() lowered the first time: nullptr when cuDNN
// refuses it (then, the first time, its reason in msg; a refusal is kept, so each shape is asked once).
template <typename K, typename Make> Plan *cached_plan(std::map<K, Plan> &cache, const K &key, Make make,
                                                       std::string &msg) {
    auto it = cache.find(key);
    if (it != cache.end()) return it->second.g ? &it->second : nullptr;
    if (cache.size() >= 256) cache.clear(); // shapes are bucketed by the callers: rarely reached
    Plan p;
    if (lower(p, make(), msg)) {
        cache[key] = Plan();
        return nullptr;
    }
    cache[key] = p;
    return &cache[key];
}

// The plan of a call's shape: built and kept, or nullptr with the reason in err.
Plan *plan_for(const PqSdpaCall *c, int bwd, char *err, size_t errsz) {
    Key key(bwd, c->B, c->smax_q, c->smax_k, c->NH, c->KVH, c->HS, c->causal, c->left_bound, c->scale);
    std::string msg;
    Plan *p = cached_plan(plans, key, [&] { return graph_of(c, bwd); }, msg);
    if (!p && !msg.empty())
        snprintf(err, errsz, "cuDNN refuses %s attention (%d segments, %d x %d, heads %d/%d of %d%s): %s",
                 bwd ? "backward" : "forward", c->B, c->smax_q, c->smax_k, c->NH, c->KVH, c->HS,
                 c->causal ? ", causal" : "", msg.c_str());
    return p;
}

// B, smax_q, maxblk, BT, NB, NH, KVH, HS, left bound, scale
typedef std::tuple<int, int, int, int, int, int, int, int, int, float> PagedKey;
std::map<PagedKey, Plan> paged_plans;

Plan *paged_plan_for(const PqSdpaPagedCall *c, char *err, size_t errsz) {
    PagedKey key(c->B, c->smax_q, c->maxblk, c->BT, c->NB, c->NH, c->KVH, c->HS, c->left_bound, c->scale);
    std::string msg;
    Plan *p = cached_plan(paged_plans, key, [&] { return paged_graph_of(c); }, msg);
    if (!p && !msg.empty())
        snprintf(err, errsz,
                 "cuDNN refuses paged attention (%d segments of up to %d rows, %d blocks of %d a table, heads %d/%d "
                 "of %d, band %d): %s",
                 c->B, c->smax_q, c->maxblk, c->BT, c->NH, c->KVH, c->HS, c->left_bound, msg.c_str());
    return p;
}

void *workspace(int64_t bytes) {
    if ((size_t)bytes > ws_cap) {
        pq_dev_free(ws_buf);
        ws_cap = (size_t)bytes + (size_t)bytes / 4;
        ws_buf = pq_dev_alloc(ws_cap);
    }
    return ws_buf;
}

// Binds the handle to the backend's stream and runs plan p on pack: 0, or -1 with the reason.
int execute(Plan *p, std::unordered_map<int64_t, void *> &pack, const char *what, char *err, size_t errsz) {
    if (handle_stream != pq_cuda_stream) {
        if (fe::detail::set_stream(handle, pq_cuda_stream) != CUDNN_STATUS_SUCCESS) {
            snprintf(err, errsz, "cudnnSetStream failed");
            return -1;
        }
        handle_stream = pq_cuda_stream;
    }
    fe::error_t e = p->g->execute(handle, pack, p->ws > 0 ? workspace(p->ws) : nullptr);
    if (!e.is_good()) {
        snprintf(err, errsz, "cuDNN %s failed: %s", what, e.get_message().c_str());
        return -1;
    }
    return 0;
}

int run(const PqSdpaCall *c, int bwd, std::unordered_map<int64_t, void *> &pack, char *err, size_t errsz) {
    if (open_cudnn() < 0) {
        snprintf(err, errsz, "%s", state_why);
        return -1;
    }
    try {
        Plan *p = plan_for(c, bwd, err, errsz);
        if (!p) {
            if (!*err) snprintf(err, errsz, "cuDNN refused this shape earlier");
            return -1;
        }
        pack[U_SEQ_Q] = (void *)c->seq_q, pack[U_SEQ_K] = (void *)c->seq_k;
        pack[U_OFF_Q] = pack[U_OFF_Q + 3] = pack[U_OFF_Q + 4] = pack[U_OFF_Q + 5] = (void *)c->off_q;
        pack[U_OFF_Q + 1] = pack[U_OFF_Q + 2] = pack[U_OFF_Q + 6] = pack[U_OFF_Q + 7] = (void *)c->off_k;
        if (!bwd) // the forward's graph has no offsets of the backward's tensors
            for (int64_t u = U_OFF_Q + 4; u <= U_OFF_Q + 7; u++) pack.erase(u);
        if (execute(p, pack, bwd ? "attention backward" : "attention forward", err, errsz)) return -1;
    } catch (std::exception &e) {
        snprintf(err, errsz, "cuDNN attention: %s", e.what());
        return -1;
    }
    return 0;
}

// Whether cuDNN's front end accepts the graph make(90) builds for an H100/H200, without asking a device: 0, or
// -1 with the reason.
template <typename Make> int validate_for_sm90(Make make, char *err, size_t errsz) {
    *err = 0;
    if (!fe::cudnn_dlhandle && !(fe::cudnn_dlhandle = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_GLOBAL))) {
        snprintf(err, errsz, "cuDNN not found");
        return -1;
    }
    try {
        fe::error_t e = make(90)->validate();
        if (!e.is_good()) {
            snprintf(err, errsz, "%s", e.get_message().c_str());
            return -1;
        }
    } catch (std::exception &e) {
        snprintf(err, errsz, "%s", e.what());
        return -1;
    }
    return 0;
}

} // namespace

extern "C" int pq_sdpa_paged_validate(const PqSdpaPagedCall *c, char *err, size_t errsz) {
    return validate_for_sm90([&](int sm) { return paged_graph_of(c, sm); }, err, errsz);
}

extern "C" int pq_sdpa_paged_forward(const PqSdpaPagedCall *c, void *o, const void *q, const void *kp, const void *vp,
                                     char *err, size_t errsz) {
    *err = 0;
    if (open_cudnn() < 0) {
        snprintf(err, errsz, "%s", state_why);
        return -1;
    }
    try {
        Plan *p = paged_plan_for(c, err, errsz);
        if (!p) {
            if (!*err) snprintf(err, errsz, "cuDNN refused this shape of paged attention earlier");
            return -1;
        }
        std::unordered_map<int64_t, void *> pack = {
            {U_Q, (void *)q},           {U_K, (void *)kp},          {U_V, (void *)vp},
            {U_O, o},                   {U_SEQ_Q, (void *)c->seq_q}, {U_SEQ_K, (void *)c->seq_k},
            {U_PT_K, (void *)c->table}, {U_PT_V, (void *)c->table}, {U_OFF_Q, (void *)c->off_q},
            {U_OFF_Q + 3, (void *)c->off_q}};
        return execute(p, pack, "paged attention", err, errsz);
    } catch (std::exception &e) {
        snprintf(err, errsz, "cuDNN paged attention: %s", e.what());
        return -1;
    }
}

extern "C" int pq_sdpa_validate(const PqSdpaCall *c, int bwd, char *err, size_t errsz) {
    return validate_for_sm90([&](int sm) { return graph_of(c, bwd, sm); }, err, errsz);
}

extern "C" int pq_sdpa_forward(const PqSdpaCall *c, void *o, float *stats, const void *q, const void *k,
                               const void *v, char *err, size_t errsz) {
    *err = 0;
    std::unordered_map<int64_t, void *> pack = {
        {U_Q, (void *)q}, {U_K, (void *)k}, {U_V, (void *)v}, {U_O, o}, {U_STATS, stats}};
    return run(c, 0, pack, err, errsz);
}

extern "C" int pq_sdpa_backward(const PqSdpaCall *c, void *dq, void *dk, void *dv, const void *q, const void *k,
                                const void *v, const void *o, const void *dout, const float *stats, char *err,
                                size_t errsz) {
    *err = 0;
    std::unordered_map<int64_t, void *> pack = {
        {U_Q, (void *)q},  {U_K, (void *)k},   {U_V, (void *)v},   {U_O, (void *)o},
        {U_DO, (void *)dout}, {U_STATS, (void *)stats}, {U_DQ, dq}, {U_DK, dk}, {U_DV, dv}};
    return run(c, 1, pack, err, errsz);
}

#endif
