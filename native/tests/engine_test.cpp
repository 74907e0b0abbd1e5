// Multi-process test and benchmark of libweft through its C ABI only.
//
//   weft_engine_test [--world N] [--bench | --bench-only] [--skip-dead]
//
// The parent forks one process per GPU (before any CUDA call); they exchange
// the NCCL id and IPC handles through files in a temporary folder. Every
// input is a pure function of (rank, token, ...), so each rank computes the
// whole world's expected layout on the CPU with an independent, sort-based
// implementation of DESIGN.md's semantics and compares: recv (bitwise),
// expert counts, weights, sources, dest_row, combine output (bitwise: the
// reference does the same f32 operations in the same order), redispatch,
// rejection of bad input on every rank, the NCCL baseline, and a peer that
// dies (the others must time out). --bench times the DeepSeek-V3 shape.
#include <cuda_fp16.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "../include/weft.h"

namespace {

int g_rank = -1;
std::string g_dir;
int g_failures = 0;

void logf(const char* fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stdout, "[rank %d] %s\n", g_rank, buf);
  fflush(stdout);
}

std::string last_error() {
  char buf[4096];
  weft_last_error(buf, sizeof buf);
  return buf;
}

#define CHECK_OK(call)                                                                         \
  do {                                                                                         \
    int32_t rc_ = (call);                                                                      \
    if (rc_ != WEFT_OK) {                                                                      \
      logf("FAIL %s:%d: %s -> %d: %s", __FILE__, __LINE__, #call, rc_, last_error().c_str());  \
      exit(2);                                                                                 \
    }                                                                                          \
  } while (0)

void expect(bool ok, const char* what, ...) {
  if (ok) return;
  char buf[2048];
  va_list ap;
  va_start(ap, what);
  vsnprintf(buf, sizeof buf, what, ap);
  va_end(ap);
  logf("MISMATCH %s", buf);
  ++g_failures;
}

// ---- file exchange ---------------------------------------------------------

void put_file(const std::string& name, const void* data, size_t n) {
  const std::string tmp = g_dir + "/." + name + ".tmp";
  FILE* f = fopen(tmp.c_str(), "wb");
  fwrite(data, 1, n, f);
  fclose(f);
  rename(tmp.c_str(), (g_dir + "/" + name).c_str());
}

std::vector<uint8_t> get_file(const std::string& name, int timeout_s = 120) {
  const std::string path = g_dir + "/" + name;
  for (int i = 0; i < timeout_s * 100; ++i) {
    FILE* f = fopen(path.c_str(), "rb");
    if (f != nullptr) {
      std::vector<uint8_t> out;
      uint8_t buf[4096];
      size_t n;
      while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
      fclose(f);
      return out;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  logf("FAIL: timed out waiting for %s", name.c_str());
  exit(3);
}

// ---- deterministic inputs -------------------------------------------------

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
uint64_t h4(uint64_t a, uint64_t b, uint64_t c, uint64_t d) { return mix(mix(mix(mix(a) ^ b) ^ c) ^ d); }
float unit(uint64_t h) { return static_cast<float>(h >> 40) / static_cast<float>(1ull << 24); }  // [0,1)

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float bf16_to_f32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
uint16_t f32_to_f16(float f) {
  const __half_raw raw = static_cast<__half_raw>(__float2half_rn(f));
  return raw.x;
}
float f16_to_f32(uint16_t b) {
  __half_raw raw;
  raw.x = b;
  return __half2float(__half(raw));
}

// Values are stored as raw element bytes of the dtype.
int elem_bytes(int dt) { return dt == WEFT_F32 ? 4 : 2; }
float load_elem(const uint8_t* p, int dt) {
  if (dt == WEFT_F32) {
    float f;
    memcpy(&f, p, 4);
    return f;
  }
  uint16_t b;
  memcpy(&b, p, 2);
  return dt == WEFT_BF16 ? bf16_to_f32(b) : f16_to_f32(b);
}
void store_elem(uint8_t* p, int dt, float f) {
  if (dt == WEFT_F32) {
    memcpy(p, &f, 4);
  } else {
    const uint16_t b = dt == WEFT_BF16 ? f32_to_bf16(f) : f32_to_f16(f);
    memcpy(p, &b, 2);
  }
}
float round_to(float f, int dt) {
  uint8_t b[4];
  store_elem(b, dt, f);
  return load_elem(b, dt);
}

// ---- plan (independent of the engine's code) -------------------------------

struct Config {
  const char* name;
  int world, gpn, experts, top_k, hidden, dtype, dedupe, receive, combine, wire_f32;
  int placement;  // 0 byDevice, 1 roundRobin
  std::vector<int> hot;  // replicated experts
  int copies;
  std::vector<int> tokens;  // per rank
  double empty_frac;        // share of -1 slots
  bool local_routing;       // experts on the own rank only (the "local" scenario)
};

struct Plan {
  Config cfg;
  int max_tokens = 0;
  std::vector<int> local_experts, slot_base, slot_expert, replica_start, replica_slots, slot_rank;
  weft_plan_desc desc(int rank) const {
    weft_plan_desc d;
    memset(&d, 0, sizeof d);
    d.world = cfg.world;
    d.rank = rank;
    d.gpus_per_node = cfg.gpn;
    d.experts = cfg.experts;
    d.top_k = cfg.top_k;
    d.hidden = cfg.hidden;
    d.dtype = cfg.dtype;
    d.dedupe = cfg.dedupe;
    d.receive = cfg.receive;
    d.combine = cfg.combine;
    d.max_tokens = max_tokens;
    d.combine_wire_f32 = cfg.wire_f32;
    d.local_experts = local_experts.data();
    d.slot_base = slot_base.data();
    d.slot_expert = slot_expert.data();
    d.replica_start = replica_start.data();
    d.replica_slots = replica_slots.data();
    return d;
  }
};

Plan make_plan(const Config& cfg) {
  Plan p;
  p.cfg = cfg;
  const int W = cfg.world, E = cfg.experts;
  for (int t : cfg.tokens) p.max_tokens = std::max(p.max_tokens, t);
  std::vector<int> owner(E);
  for (int e = 0; e < E; ++e) owner[e] = cfg.placement == 0 ? e / (E / W) : e % W;
  std::vector<std::vector<int>> base(W), extra(W);
  std::vector<std::vector<int>> holders(E);
  for (int e = 0; e < E; ++e) {
    base[owner[e]].push_back(e);
    holders[e].push_back(owner[e]);
  }
  const int copies = std::min(cfg.copies, W);  // more copies than ranks cannot be placed
  for (int e : cfg.hot) {
    const int step = (W + copies - 1) / copies;
    for (int i = 1; i < copies; ++i) {
      int r = (owner[e] + i * step) % W;
      while (std::find(holders[e].begin(), holders[e].end(), r) != holders[e].end()) r = (r + 1) % W;
      holders[e].push_back(r);
      extra[r].push_back(e);
    }
  }
  p.slot_base.push_back(0);
  for (int r = 0; r < W; ++r) {
    std::sort(base[r].begin(), base[r].end());
    std::sort(extra[r].begin(), extra[r].end());
    for (int e : base[r]) p.slot_expert.push_back(e);
    for (int e : extra[r]) p.slot_expert.push_back(e);
    p.local_experts.push_back(static_cast<int>(base[r].size() + extra[r].size()));
    p.slot_base.push_back(p.slot_base.back() + p.local_experts.back());
    for (int i = 0; i < p.local_experts.back(); ++i) p.slot_rank.push_back(r);
  }
  p.replica_start.push_back(0);
  for (int e = 0; e < E; ++e) {
    for (size_t s = 0; s < p.slot_expert.size(); ++s) {
      if (p.slot_expert[s] == e) p.replica_slots.push_back(static_cast<int>(s));  // ascending slot = ascending rank
    }
    p.replica_start.push_back(static_cast<int>(p.replica_slots.size()));
  }
  return p;
}

int ref_resolve(const Plan& p, int src, int t, int e) {
  std::vector<int> reps(p.replica_slots.begin() + p.replica_start[e], p.replica_slots.begin() + p.replica_start[e + 1]);
  for (int s : reps) {
    if (p.slot_rank[s] == src) return s;
  }
  std::vector<int> near;
  for (int s : reps) {
    if (p.slot_rank[s] / p.cfg.gpn == src / p.cfg.gpn) near.push_back(s);
  }
  if (!near.empty()) return near[t % near.size()];
  return reps[t % reps.size()];
}

// ---- inputs ------------------------------------------------------------------

struct Inputs {
  std::vector<uint8_t> x;  // [T][H] dtype
  std::vector<int32_t> idx;
  std::vector<float> w;
};

Inputs make_inputs(const Plan& p, int r, uint64_t seed) {
  const Config& c = p.cfg;
  const int T = c.tokens[r], K = c.top_k, H = c.hidden, eb = elem_bytes(c.dtype);
  Inputs in;
  in.x.resize(static_cast<size_t>(T) * H * eb);
  in.idx.assign(static_cast<size_t>(T) * K, -1);
  in.w.resize(static_cast<size_t>(T) * K);
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const float v = unit(h4(seed, r, t, h)) * 2.f - 1.f;
      store_elem(&in.x[(static_cast<size_t>(t) * H + h) * eb], c.dtype, v);
    }
    std::vector<int> chosen;
    for (int k = 0; k < K; ++k) {
      in.w[static_cast<size_t>(t) * K + k] = 0.05f + unit(h4(seed + 1, r, t, k));
      if (unit(h4(seed + 2, r, t, k)) < c.empty_frac) continue;
      int e;
      int tries = 0;
      do {
        const uint64_t hh = h4(seed + 3, r, t, static_cast<uint64_t>(k) * 1000 + tries);
        if (c.local_routing) {
          const int lo = p.slot_base[r];
          const int n = p.local_experts[r];
          e = p.slot_expert[lo + static_cast<int>(hh % n)];
        } else {
          e = static_cast<int>(hh % c.experts);
        }
        ++tries;
      } while (std::find(chosen.begin(), chosen.end(), e) != chosen.end() && tries < 1000);
      if (std::find(chosen.begin(), chosen.end(), e) != chosen.end()) continue;
      chosen.push_back(e);
      in.idx[static_cast<size_t>(t) * K + k] = e;
    }
  }
  return in;
}

// ---- reference layout --------------------------------------------------------

struct Pair {
  int l, r, t, k;
};

struct RefLayout {
  // destination side, per destination d
  std::vector<std::vector<Pair>> rows;        // [d][row]
  std::vector<std::vector<int>> counts;       // [d][l]
  // source side: dest rank and row of every (r,t,k)
  std::vector<std::vector<int>> dest_rank, dest_row;
};

RefLayout ref_layout(const Plan& p, const std::vector<Inputs>& in) {
  const Config& c = p.cfg;
  const int W = c.world, K = c.top_k;
  RefLayout L;
  L.rows.resize(W);
  L.counts.resize(W);
  L.dest_rank.resize(W);
  L.dest_row.resize(W);
  for (int d = 0; d < W; ++d) L.counts[d].assign(p.local_experts[d], 0);
  for (int r = 0; r < W; ++r) {
    L.dest_rank[r].assign(static_cast<size_t>(c.tokens[r]) * K, -1);
    L.dest_row[r].assign(static_cast<size_t>(c.tokens[r]) * K, -1);
    for (int t = 0; t < c.tokens[r]; ++t) {
      for (int k = 0; k < K; ++k) {
        const int e = in[r].idx[static_cast<size_t>(t) * K + k];
        if (e < 0) continue;
        const int s = ref_resolve(p, r, t, e);
        const int d = p.slot_rank[s];
        const int l = s - p.slot_base[d];
        L.rows[d].push_back({l, r, t, k});
        L.counts[d][l]++;
        L.dest_rank[r][static_cast<size_t>(t) * K + k] = d;
      }
    }
  }
  for (int d = 0; d < W; ++d) {
    auto& v = L.rows[d];
    if (c.receive == WEFT_EXPERT_MAJOR) {
      std::sort(v.begin(), v.end(), [](const Pair& a, const Pair& b) {
        return std::tie(a.l, a.r, a.t, a.k) < std::tie(b.l, b.r, b.t, b.k);
      });
    } else {
      std::sort(v.begin(), v.end(), [](const Pair& a, const Pair& b) {
        return std::tie(a.r, a.l, a.t, a.k) < std::tie(b.r, b.l, b.t, b.k);
      });
    }
    for (size_t i = 0; i < v.size(); ++i) L.dest_row[v[i].r][static_cast<size_t>(v[i].t) * K + v[i].k] = static_cast<int>(i);
  }
  return L;
}

// Expert output for the pair (r,t,k), element h: a pure function, so the
// reference needs no copy of y.
float y_value(uint64_t seed, int r, int t, int k, int h, int dt) {
  return round_to(unit(h4(seed + 7, r, t, static_cast<uint64_t>(k) * 100003 + h)) * 4.f - 2.f, dt);
}

// out[t] on home r, element h, exactly as DESIGN.md orders the sums.
// identity_y: the expert output of every pair is its input row (y = recv).
float pair_y(const Plan& p, const std::vector<Inputs>& in, uint64_t seed, bool identity_y, int r, int t, int k, int h) {
  const int dt = p.cfg.dtype;
  if (identity_y) return load_elem(&in[r].x[(static_cast<size_t>(t) * p.cfg.hidden + h) * elem_bytes(dt)], dt);
  return y_value(seed, r, t, k, h, dt);
}

float ref_combine(const Plan& p, const std::vector<Inputs>& in, const RefLayout& L, uint64_t seed, bool identity_y,
                  int r, int t, int h) {
  const Config& c = p.cfg;
  const int K = c.top_k;
  const int wire = c.wire_f32 ? WEFT_F32 : c.dtype;
  const bool weighted = c.combine == WEFT_WEIGHTED;
  // combine.cu's precision rule: weighted 16-bit rows with wire = dtype send
  // a one-term partial as raw y and weight it at home, so w·y is rounded to
  // f32 only, never to the wire dtype.
  const bool raw = weighted && wire == c.dtype && c.dtype != WEFT_F32;
  float out = 0.f;
  if (c.dedupe == WEFT_DEDUPE_NONE) {
    for (int k = 0; k < K; ++k) {
      if (L.dest_rank[r][static_cast<size_t>(t) * K + k] < 0) continue;
      const float y = pair_y(p, in, seed, identity_y, r, t, k, h);
      const float w = weighted ? in[r].w[static_cast<size_t>(t) * K + k] : 1.f;
      const float prod = w * y;
      const float part = raw ? prod : round_to(0.f + prod, wire);
      out = out + part;
    }
  } else {
    for (int d = 0; d < c.world; ++d) {
      int terms = 0;
      float part = 0.f;
      for (int k = 0; k < K; ++k) {
        if (L.dest_rank[r][static_cast<size_t>(t) * K + k] != d) continue;
        ++terms;
        const float y = pair_y(p, in, seed, identity_y, r, t, k, h);
        const float w = weighted ? in[r].w[static_cast<size_t>(t) * K + k] : 1.f;
        const float prod = w * y;
        part = part + prod;
      }
      if (terms > 0) out = out + (raw && terms == 1 ? part : round_to(part, wire));
    }
  }
  return round_to(out, c.dtype);
}

// ---- device helpers ----------------------------------------------------------

int g_device = 0;

void* dev_alloc(size_t n) {
  void* p = nullptr;
  CHECK_OK(weft_alloc(g_device, n, &p));
  return p;
}
template <typename T>
std::vector<T> to_host(const void* d, size_t n) {
  std::vector<T> v(n);
  if (n > 0) CHECK_OK(weft_copy_d2h(g_device, v.data(), d, n * sizeof(T)));
  return v;
}

struct World {
  weft_comm_t comm = nullptr;
  int world = 0;
};

World open_world(int world, uint64_t heap, int timeout_ms, const std::string& tag, bool nccl) {
  World w;
  w.world = world;
  std::vector<uint8_t> id(WEFT_UNIQUE_ID_BYTES, 0);
  if (nccl) {
    if (g_rank == 0) {
      CHECK_OK(weft_nccl_unique_id(id.data()));
      put_file(tag + ".ncclid", id.data(), id.size());
    }
    id = get_file(tag + ".ncclid");
  }
  CHECK_OK(weft_comm_create(g_device, g_rank, world, nccl ? id.data() : nullptr, heap, timeout_ms, &w.comm));
  uint8_t h[WEFT_IPC_HANDLE_BYTES];
  CHECK_OK(weft_comm_ipc_handle(w.comm, h));
  put_file(tag + ".ipc." + std::to_string(g_rank), h, sizeof h);
  std::vector<uint8_t> all(static_cast<size_t>(world) * WEFT_IPC_HANDLE_BYTES);
  for (int r = 0; r < world; ++r) {
    auto b = get_file(tag + ".ipc." + std::to_string(r));
    memcpy(all.data() + static_cast<size_t>(r) * WEFT_IPC_HANDLE_BYTES, b.data(), WEFT_IPC_HANDLE_BYTES);
  }
  CHECK_OK(weft_comm_open_peers(w.comm, all.data()));
  return w;
}

// ---- one configuration -------------------------------------------------------

void test_config(World& w, const Config& cfg, uint64_t seed, bool full_check) {
  const Plan p = make_plan(cfg);
  const int W = cfg.world, K = cfg.top_k, H = cfg.hidden, eb = elem_bytes(cfg.dtype);
  const size_t row = static_cast<size_t>(H) * eb;
  const auto t_start = std::chrono::steady_clock::now();
  std::vector<Inputs> in;
  for (int r = 0; r < W; ++r) in.push_back(make_inputs(p, r, seed));
  const RefLayout L = ref_layout(p, in);
  const int me = g_rank;
  const int T = cfg.tokens[me];

  weft_plan_desc desc = p.desc(me);
  weft_engine_t eng = nullptr;
  CHECK_OK(weft_engine_create(w.comm, &desc, &eng));

  // Device inputs for even seeds, host inputs for odd ones: both paths run.
  const bool on_dev = (seed & 1) == 0;
  const void* x = in[me].x.data();
  const int32_t* idx = in[me].idx.data();
  const float* wt = in[me].w.data();
  void *dx = nullptr, *di = nullptr, *dw = nullptr;
  if (on_dev && T > 0) {
    dx = dev_alloc(in[me].x.size());
    di = dev_alloc(in[me].idx.size() * 4);
    dw = dev_alloc(in[me].w.size() * 4);
    CHECK_OK(weft_copy_h2d(g_device, dx, in[me].x.data(), in[me].x.size()));
    CHECK_OK(weft_copy_h2d(g_device, di, in[me].idx.data(), in[me].idx.size() * 4));
    CHECK_OK(weft_copy_h2d(g_device, dw, in[me].w.data(), in[me].w.size() * 4));
    x = dx;
    idx = static_cast<int32_t*>(di);
    wt = static_cast<float*>(dw);
  }
  weft_handle_t hd = nullptr;
  CHECK_OK(weft_dispatch(eng, x, idx, wt, T, on_dev ? 1 : 0, &hd));
  weft_dispatch_info info;
  CHECK_OK(weft_handle_info(hd, &info));
  const auto& rows = L.rows[me];
  const int R = static_cast<int>(rows.size());
  expect(info.recv_rows == R, "%s: recv_rows %d, expected %d", cfg.name, info.recv_rows, R);
  expect(info.tokens == T, "%s: tokens %d, expected %d", cfg.name, info.tokens, T);
  expect(info.local_experts == p.local_experts[me], "%s: local_experts", cfg.name);
  if (info.recv_rows == R) {
    auto cnt = to_host<int32_t>(info.expert_counts, info.local_experts);
    for (int l = 0; l < info.local_experts; ++l) {
      expect(cnt[l] == L.counts[me][l], "%s: expert_counts[%d] = %d, expected %d", cfg.name, l, cnt[l], L.counts[me][l]);
    }
    auto sr = to_host<int32_t>(info.src_rank, R);
    auto st = to_host<int32_t>(info.src_token, R);
    auto sk = to_host<int32_t>(info.src_k, R);
    auto rw = to_host<float>(info.recv_weights, R);
    int bad = 0;
    for (int i = 0; i < R && bad < 5; ++i) {
      const Pair& q = rows[i];
      const float wexp = in[q.r].w[static_cast<size_t>(q.t) * K + q.k];
      if (sr[i] != q.r || st[i] != q.t || sk[i] != q.k || memcmp(&rw[i], &wexp, 4) != 0) {
        expect(false, "%s: row %d source (%d,%d,%d) w %g, expected (%d,%d,%d) w %g", cfg.name, i, sr[i], st[i], sk[i],
               rw[i], q.r, q.t, q.k, wexp);
        ++bad;
      }
    }
    // recv rows: all of them, or a sample on the big shapes.
    const int step = full_check ? 1 : std::max(1, R / 4000);
    std::vector<uint8_t> got(row);
    for (int i = 0; i < R && bad < 5; i += step) {
      const Pair& q = rows[i];
      CHECK_OK(weft_copy_d2h(g_device, got.data(), static_cast<uint8_t*>(info.recv) + static_cast<size_t>(i) * row, row));
      if (memcmp(got.data(), &in[q.r].x[static_cast<size_t>(q.t) * row], row) != 0) {
        expect(false, "%s: recv row %d (from rank %d token %d) differs", cfg.name, i, q.r, q.t);
        ++bad;
      }
    }
    auto dr = to_host<int32_t>(info.dest_row, static_cast<size_t>(T) * K);
    for (size_t i = 0; i < dr.size() && bad < 5; ++i) {
      if (dr[i] != L.dest_row[me][i]) {
        expect(false, "%s: dest_row[%zu] = %d, expected %d", cfg.name, i, dr[i], L.dest_row[me][i]);
        ++bad;
      }
    }
  }

  // Combine with a y that differs per pair (full check), or y = recv (big shapes).
  const bool identity_y = !full_check;
  void* dy = nullptr;
  if (!identity_y) {
    std::vector<uint8_t> y(static_cast<size_t>(R) * row);
    for (int i = 0; i < R; ++i) {
      const Pair& q = rows[i];
      for (int h = 0; h < H; ++h) {
        store_elem(&y[(static_cast<size_t>(i) * H + h) * eb], cfg.dtype, y_value(seed, q.r, q.t, q.k, h, cfg.dtype));
      }
    }
    dy = dev_alloc(y.size());
    if (!y.empty()) CHECK_OK(weft_copy_h2d(g_device, dy, y.data(), y.size()));
  }
  void* dout = dev_alloc(static_cast<size_t>(T) * row);
  CHECK_OK(weft_memset(g_device, dout, 0xff, static_cast<size_t>(T) * row));
  CHECK_OK(weft_combine(hd, identity_y ? info.recv : dy, dout));
  {
    const int step = full_check ? 1 : std::max(1, T / 500);
    std::vector<uint8_t> got(row);
    int bad = 0;
    for (int t = 0; t < T && bad < 5; t += step) {
      CHECK_OK(weft_copy_d2h(g_device, got.data(), static_cast<uint8_t*>(dout) + static_cast<size_t>(t) * row, row));
      for (int h = 0; h < H; ++h) {
        const float want = ref_combine(p, in, L, seed, identity_y, me, t, h);
        const float have = load_elem(&got[static_cast<size_t>(h) * eb], cfg.dtype);
        if (memcmp(&want, &have, 4) != 0 && !(std::isnan(want) && std::isnan(have))) {
          expect(false, "%s: combine out[%d][%d] = %.9g, expected %.9g", cfg.name, t, h, have, want);
          ++bad;
          break;
        }
      }
    }
  }

  // Redispatch new rows through the same layout.
  if (full_check) {
    std::vector<uint8_t> x2(in[me].x.size());
    for (size_t i = 0; i < x2.size(); ++i) x2[i] = static_cast<uint8_t>(in[me].x[i] ^ 0x5a);
    CHECK_OK(weft_redispatch(hd, x2.data(), 0));
    CHECK_OK(weft_handle_info(hd, &info));
    std::vector<uint8_t> got(row);
    int bad = 0;
    for (int i = 0; i < R && bad < 3; ++i) {
      const Pair& q = rows[i];
      CHECK_OK(weft_copy_d2h(g_device, got.data(), static_cast<uint8_t*>(info.recv) + static_cast<size_t>(i) * row, row));
      const uint8_t* src = &in[q.r].x[static_cast<size_t>(q.t) * row];
      for (size_t b = 0; b < row; ++b) {
        if (got[b] != static_cast<uint8_t>(src[b] ^ 0x5a)) {
          expect(false, "%s: redispatch row %d differs", cfg.name, i);
          ++bad;
          break;
        }
      }
    }
  }
  CHECK_OK(weft_handle_destroy(hd));
  if (dy) CHECK_OK(weft_free(g_device, dy));
  CHECK_OK(weft_free(g_device, dout));
  if (dx) CHECK_OK(weft_free(g_device, dx));
  if (di) CHECK_OK(weft_free(g_device, di));
  if (dw) CHECK_OK(weft_free(g_device, dw));
  CHECK_OK(weft_engine_destroy(eng));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  logf("%s %s (%.1f s, R=%d)", g_failures ? "checked (with failures so far)" : "ok", cfg.name, s, R);
}

// Bad input on one rank: every rank fails, with the same call, and the comm stays usable.
void test_bad_input(World& w, int kind) {
  Config cfg{"bad", w.world, w.world, 16, 4, 64, WEFT_BF16, WEFT_DEDUPE_DEVICE, WEFT_EXPERT_MAJOR, WEFT_WEIGHTED, 0, 0, {}, 1,
             std::vector<int>(w.world, 40), 0.0, false};
  const Plan p = make_plan(cfg);
  Inputs in = make_inputs(p, g_rank, 99);
  const int bad_rank = 1 % w.world;
  int32_t tokens = 40;
  if (g_rank == bad_rank) {
    if (kind == 0) in.idx[7 * 4 + 2] = 16;                    // out of range
    if (kind == 1) in.idx[5 * 4 + 3] = in.idx[5 * 4 + 0];     // duplicate
    if (kind == 2) in.w[3 * 4 + 1] = std::nanf("");           // NaN
    if (kind == 3) tokens = 41;                               // over max_tokens
  }
  weft_plan_desc desc = p.desc(g_rank);
  weft_engine_t eng = nullptr;
  CHECK_OK(weft_engine_create(w.comm, &desc, &eng));
  weft_handle_t hd = nullptr;
  in.x.resize(static_cast<size_t>(41) * 64 * 2);
  in.idx.resize(41 * 4, -1);
  in.w.resize(41 * 4, 0.5f);
  const int32_t rc = weft_dispatch(eng, in.x.data(), in.idx.data(), in.w.data(), tokens, 0, &hd);
  const int want = g_rank == bad_rank ? (kind == 3 ? WEFT_ERR_CAPACITY : WEFT_ERR_BAD_INPUT) : WEFT_ERR_BAD_INPUT;
  expect(rc == want && hd == nullptr, "bad input kind %d: rc %d (want %d), handle %p", kind, rc, want, (void*)hd);
  logf("bad input kind %d -> rc %d: %s", kind, rc, last_error().c_str());
  CHECK_OK(weft_comm_barrier(w.comm));  // still in step
  CHECK_OK(weft_engine_destroy(eng));
}

void test_baseline(World& w, const Config& cfg, uint64_t seed) {
  const Plan p = make_plan(cfg);
  const int me = g_rank, T = cfg.tokens[me], K = cfg.top_k, H = cfg.hidden, eb = elem_bytes(cfg.dtype);
  const Inputs in = make_inputs(p, me, seed);
  weft_plan_desc desc = p.desc(me);
  weft_baseline_t b = nullptr;
  CHECK_OK(weft_baseline_create(w.comm, &desc, &b));
  void* dout = dev_alloc(static_cast<size_t>(T) * H * eb);
  int32_t R = 0;
  CHECK_OK(weft_baseline_run(b, in.x.data(), in.idx.data(), in.w.data(), T, dout, &R));
  std::vector<uint8_t> out = to_host<uint8_t>(dout, static_cast<size_t>(T) * H * eb);
  int bad = 0;
  for (int t = 0; t < T && bad < 3; ++t) {
    for (int h = 0; h < H; ++h) {
      float acc = 0.f;
      for (int k = 0; k < K; ++k) {
        if (in.idx[static_cast<size_t>(t) * K + k] < 0) continue;
        const float wk = cfg.combine == WEFT_WEIGHTED ? in.w[static_cast<size_t>(t) * K + k] : 1.f;
        const float prod = wk * load_elem(&in.x[(static_cast<size_t>(t) * H + h) * eb], cfg.dtype);
        acc = acc + prod;
      }
      const float want = round_to(acc, cfg.dtype);
      const float have = load_elem(&out[(static_cast<size_t>(t) * H + h) * eb], cfg.dtype);
      if (memcmp(&want, &have, 4) != 0) {
        expect(false, "baseline %s: out[%d][%d] = %g, expected %g", cfg.name, t, h, have, want);
        ++bad;
        break;
      }
    }
  }
  std::vector<Inputs> all;
  for (int r = 0; r < cfg.world; ++r) all.push_back(make_inputs(p, r, seed));
  const RefLayout L = ref_layout(p, all);
  expect(R == static_cast<int>(L.rows[me].size()), "baseline %s: R = %d, expected %zu", cfg.name, R, L.rows[me].size());
  CHECK_OK(weft_free(g_device, dout));
  CHECK_OK(weft_baseline_destroy(b));
  logf("baseline %s checked (R=%d)", cfg.name, R);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

void bench(World& w, int tokens, bool local, bool with_baseline = true) {
  Config cfg{local ? "bench-local" : "bench-uniform", w.world, w.world, 256, 8, 7168, WEFT_BF16, WEFT_DEDUPE_DEVICE,
             WEFT_EXPERT_MAJOR, WEFT_WEIGHTED, 0, 0, {}, 1, std::vector<int>(w.world, tokens), 0.0, local};
  const Plan p = make_plan(cfg);
  const int me = g_rank, H = 7168;
  const Inputs in = make_inputs(p, me, 5);
  weft_plan_desc desc = p.desc(me);
  weft_engine_t eng = nullptr;
  CHECK_OK(weft_engine_create(w.comm, &desc, &eng));
  void* dx = dev_alloc(in.x.size());
  void* di = dev_alloc(in.idx.size() * 4);
  void* dw = dev_alloc(in.w.size() * 4);
  void* dout = dev_alloc(static_cast<size_t>(tokens) * H * 2);
  CHECK_OK(weft_copy_h2d(g_device, dx, in.x.data(), in.x.size()));
  CHECK_OK(weft_copy_h2d(g_device, di, in.idx.data(), in.idx.size() * 4));
  CHECK_OK(weft_copy_h2d(g_device, dw, in.w.data(), in.w.size() * 4));
  weft_timer_t tm = nullptr;
  CHECK_OK(weft_timer_create(w.comm, &tm));
  std::vector<double> td, tc, tt, tg;
  for (int it = 0; it < 12; ++it) {
    CHECK_OK(weft_comm_barrier(w.comm));
    CHECK_OK(weft_timer_start(tm));
    const auto a = std::chrono::steady_clock::now();
    weft_handle_t hd = nullptr;
    CHECK_OK(weft_dispatch(eng, dx, static_cast<int32_t*>(di), static_cast<float*>(dw), tokens, 1, &hd));
    const auto b = std::chrono::steady_clock::now();
    weft_dispatch_info info;
    CHECK_OK(weft_handle_info(hd, &info));
    CHECK_OK(weft_combine(hd, info.recv, dout));
    const auto c = std::chrono::steady_clock::now();
    float gpu_ms = 0.f;
    CHECK_OK(weft_timer_stop(tm, &gpu_ms));
    CHECK_OK(weft_handle_destroy(hd));
    if (it >= 2) {
      td.push_back(std::chrono::duration<double, std::milli>(b - a).count());
      tc.push_back(std::chrono::duration<double, std::milli>(c - b).count());
      tt.push_back(std::chrono::duration<double, std::milli>(c - a).count());
      tg.push_back(gpu_ms);
    }
  }
  logf("BENCH %s T=%d weft: dispatch %.3f ms, combine %.3f ms, total %.3f ms (stream %.3f ms)", cfg.name, tokens,
       median(td), median(tc), median(tt), median(tg));
  // Redispatch alone (the pull with no layout work).
  {
    weft_handle_t hd = nullptr;
    CHECK_OK(weft_dispatch(eng, dx, static_cast<int32_t*>(di), static_cast<float*>(dw), tokens, 1, &hd));
    std::vector<double> tr;
    for (int it = 0; it < 8; ++it) {
      CHECK_OK(weft_comm_barrier(w.comm));
      const auto a = std::chrono::steady_clock::now();
      CHECK_OK(weft_redispatch(hd, dx, 1));
      tr.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
    }
    logf("BENCH %s T=%d weft redispatch (pull only) %.3f ms", cfg.name, tokens, median(tr));
    CHECK_OK(weft_handle_destroy(hd));
  }
  weft_baseline_t bl = nullptr;
  if (with_baseline && weft_baseline_create(w.comm, &desc, &bl) == WEFT_OK) {
    std::vector<double> tb;
    for (int it = 0; it < 8; ++it) {
      CHECK_OK(weft_comm_barrier(w.comm));
      int32_t R = 0;
      const auto a = std::chrono::steady_clock::now();
      CHECK_OK(weft_baseline_run(bl, dx, static_cast<int32_t*>(di), static_cast<float*>(dw), tokens, dout, &R));
      if (it >= 2) tb.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
    }
    logf("BENCH %s T=%d nccl baseline total %.3f ms", cfg.name, tokens, median(tb));
    CHECK_OK(weft_baseline_destroy(bl));
  }
  CHECK_OK(weft_timer_destroy(tm));
  for (void* ptr : {dx, di, dw, dout}) CHECK_OK(weft_free(g_device, ptr));
  CHECK_OK(weft_engine_destroy(eng));
}

int child(int world, bool do_bench, bool skip_dead, bool bench_only) {
  g_device = g_rank;
  std::vector<Config> configs = {
      {"bf16-device-expert", world, world, 16, 4, 136, WEFT_BF16, WEFT_DEDUPE_DEVICE, WEFT_EXPERT_MAJOR, WEFT_WEIGHTED, 0, 0, {}, 1, {}, 0.1, false},
      {"bf16-none-rank-sum", world, world, 16, 4, 64, WEFT_BF16, WEFT_DEDUPE_NONE, WEFT_RANK_MAJOR, WEFT_SUM, 0, 1, {}, 1, {}, 0.1, false},
      {"f32-node-rr", world, world, 12, 3, 40, WEFT_F32, WEFT_DEDUPE_NODE, WEFT_EXPERT_MAJOR, WEFT_WEIGHTED, 0, 1, {}, 1, {}, 0.0, false},
      {"f16-wiref32-replicas", world, world, 16, 6, 1024, WEFT_F16, WEFT_DEDUPE_DEVICE, WEFT_EXPERT_MAJOR, WEFT_WEIGHTED, 1, 0, {0, 3, 9}, 3, {}, 0.2, false},
      {"bf16-replicas-2nodes", world, std::max(1, world / 2), 32, 8, 7168, WEFT_BF16, WEFT_DEDUPE_DEVICE, WEFT_RANK_MAJOR, WEFT_WEIGHTED, 0, 0, {1, 2}, 2, {}, 0.05, false},
      {"bf16-k1", world, world, 8, 1, 8, WEFT_BF16, WEFT_DEDUPE_DEVICE, WEFT_EXPERT_MAJOR, WEFT_WEIGHTED, 0, 0, {}, 1, {}, 0.0, false},
      {"bf16-k32-big", world, world, 64, 32, 256, WEFT_BF16, WEFT_DEDUPE_DEVICE, WEFT_EXPERT_MAJOR, WEFT_WEIGHTED, 1, 0, {}, 1, {}, 0.3, false},
  };
  // Token counts differ per rank, include a rank with 0 tokens and a long batch.
  for (auto& c : configs) {
    c.tokens.clear();
    for (int r = 0; r < world; ++r) c.tokens.push_back(r == world - 1 && world > 1 ? 0 : 150 + 37 * r);
  }
  configs[4].tokens.assign(world, 0);
  for (int r = 0; r < world; ++r) configs[4].tokens[r] = 3000 + 101 * r;
  uint64_t heap = 0;
  for (const auto& c : configs) {
    const Plan p = make_plan(c);
    weft_plan_desc d = p.desc(g_rank);
    uint64_t need = 0;
    CHECK_OK(weft_engine_heap_bytes(&d, &need));
    heap = std::max(heap, need);
  }
  if (do_bench) {
    for (int T : {4096, 16384}) {
      Config b{"b", world, world, 256, 8, 7168, WEFT_BF16, WEFT_DEDUPE_DEVICE, WEFT_EXPERT_MAJOR, WEFT_WEIGHTED, 0, 0, {}, 1, std::vector<int>(world, T), 0.0, false};
      const Plan p = make_plan(b);
      weft_plan_desc d = p.desc(g_rank);
      uint64_t need = 0;
      CHECK_OK(weft_engine_heap_bytes(&d, &need));
      heap = std::max(heap, need);
    }
  }
  int nccl = 0;
  CHECK_OK(weft_nccl_available(&nccl));
  World w = open_world(world, heap, 20000, "main", nccl != 0);
  logf("comm up: world %d, heap %.1f MB, nccl %d", world, heap / 1e6, nccl);
  if (bench_only) {
    bench(w, 16384, false, false);
    bench(w, 16384, true, false);
    CHECK_OK(weft_comm_destroy(w.comm));
    return 0;
  }

  uint64_t seed = 10;
  for (const auto& c : configs) test_config(w, c, seed++, true);
  for (int kind = 0; kind < 4; ++kind) test_bad_input(w, kind);
  if (nccl) {
    test_baseline(w, configs[0], 41);
    test_baseline(w, configs[3], 42);
  }
  if (do_bench) {
    float ms = 0.f;
    CHECK_OK(weft_comm_barrier(w.comm));
    CHECK_OK(weft_copy_ceiling(w.comm, (g_rank + 1) % world, 512ull << 20, 5, &ms));
    CHECK_OK(weft_comm_barrier(w.comm));
    logf("BENCH copy ceiling to rank %d: %.1f GB/s", (g_rank + 1) % world, (512.0 * (1 << 20)) / (ms * 1e6));
    Config check{"dsv3-16384-check", world, world, 256, 8, 7168, WEFT_BF16, WEFT_DEDUPE_DEVICE, WEFT_EXPERT_MAJOR, WEFT_WEIGHTED, 0, 0, {}, 1, std::vector<int>(world, 16384), 0.0, false};
    test_config(w, check, 77, false);
    bench(w, 4096, false);
    bench(w, 16384, false);
    bench(w, 16384, true);
  }
  CHECK_OK(weft_comm_destroy(w.comm));

  if (!skip_dead && world > 1) {
    // A peer that dies: the others must fail with WEFT_ERR_TIMEOUT, not hang.
    World d = open_world(world, 1 << 20, 2000, "dead", false);
    if (g_rank == world - 1) {
      // Stuck, not gone: it never reaches the barrier while the others wait.
      logf("dead-peer test: rank %d skips the barrier", g_rank);
      std::this_thread::sleep_for(std::chrono::seconds(6));
      logf("%s (%d failures)", g_failures == 0 ? "PASS" : "FAIL", g_failures);
      _exit(g_failures == 0 ? 0 : 1);
    }
    const auto a = std::chrono::steady_clock::now();
    const int32_t rc = weft_comm_barrier(d.comm);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
    expect(rc == WEFT_ERR_TIMEOUT, "dead peer: rc %d, want WEFT_ERR_TIMEOUT", rc);
    logf("dead peer -> rc %d after %.2f s: %s", rc, s, last_error().c_str());
    const int32_t rc2 = weft_comm_barrier(d.comm);
    expect(rc2 == WEFT_ERR_TIMEOUT, "after a timeout the comm must fail fast: rc %d", rc2);
    weft_comm_destroy(d.comm);
  }
  logf("%s (%d failures)", g_failures == 0 ? "PASS" : "FAIL", g_failures);
  return g_failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int world = 0;
  bool do_bench = false;
  bool skip_dead = false;
  bool bench_only = false;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--world") && i + 1 < argc) world = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--bench")) do_bench = true;
    else if (!strcmp(argv[i], "--skip-dead")) skip_dead = true;
    else if (!strcmp(argv[i], "--bench-only")) bench_only = do_bench = true;
  }
  if (world <= 0) {
    // Count GPUs in a child, so the parent never initializes CUDA before fork.
    pid_t pid = fork();
    if (pid == 0) {
      int32_t n = 0;
      weft_device_count(&n);
      _exit(n > 255 ? 255 : n);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    world = WIFEXITED(st) ? WEXITSTATUS(st) : 0;
  }
  if (world <= 0) {
    fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  char tmpl[] = "/tmp/weft_test_XXXXXX";
  g_dir = mkdtemp(tmpl);
  std::vector<pid_t> kids;
  for (int r = 0; r < world; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      g_rank = r;
      _exit(child(world, do_bench, skip_dead, bench_only));
    }
    kids.push_back(pid);
  }
  int failed = 0;
  for (int r = 0; r < world; ++r) {
    int st = 0;
    waitpid(kids[r], &st, 0);
    const bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!ok) {
      ++failed;
      fprintf(stdout, "rank %d exited with %s %d\n", r, WIFEXITED(st) ? "status" : "signal",
              WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    }
  }
  fprintf(stdout, "%s: %d of %d ranks failed\n", failed ? "FAIL" : "PASS", failed, world);
  return failed ? 1 : 0;
}
