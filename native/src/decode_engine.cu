// Decode mode's host side (decode.h): checks and sizes, create and destroy,
// the enqueueing calls, graph capture and replay, and the error report of
// weft_decode_check. Nothing here reads the device between a step's
// dispatch and its combine.
#include <string.h>

#include <string>

#include "decode.h"

namespace weft {
namespace {

uint64_t take(uint64_t* off, uint64_t bytes) {
  const uint64_t at = *off;
  *off = align256(*off + bytes);
  return at;
}

int local_of(const PlanHost& p) { return p.local_experts[p.rank]; }

int32_t check_plan(const PlanHost& p, int32_t expert_capacity, int* ecap) {
  if (p.quantize != WEFT_QUANTIZE_NONE) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, p.rank,
                 "mode decode: plan.quantize is E4M3; decode mode moves rows in the plan's dtype: build the pattern "
                 "without .quantize()");
  }
  if (p.receive != WEFT_EXPERT_MAJOR) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, p.rank,
                 "mode decode: plan.receive is rank-major; decode mode's receive buffer is expert-major with a fixed "
                 "capacity per expert: build the pattern with receive expert-major");
  }
  if (p.world > kMaxWorld) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, p.rank, "mode decode: world %d > %d: decode mode runs inside one NVLink domain",
                 p.world, kMaxWorld);
  }
  if (p.row_bytes() % 16 != 0) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, p.rank, "mode decode: hidden %d: rows must be a multiple of 16 bytes", p.hidden);
  }
  const long long worst = static_cast<long long>(p.world) * p.max_tokens;
  long long c = expert_capacity == 0 ? worst : expert_capacity;
  if (expert_capacity < 0) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, p.rank, "expertCapacity is %d: pass an integer >= 1 (or 0 for world x capacity)",
                 expert_capacity);
  }
  if (c > worst) c = worst;  // a local expert never receives more than world x capacity rows
  if (c < 1) c = 1;
  const long long rows = c * local_of(p);
  if (rows > 0x7fffffffll || worst * p.top_k > 0x7fffffffll) {
    WEFT_FAIL_AT(WEFT_ERR_CAPACITY, p.rank,
                 "mode decode: %d local experts x expert capacity %lld rows exceeds 2^31-1: lower capacity or "
                 "expertCapacity",
                 local_of(p), c);
  }
  *ecap = static_cast<int>(c);
  return WEFT_OK;
}

void clear_errors(DecodeStatus* s) {
  s->bad_key = ~0ull;
  s->over_key = ~0ull;
  s->bad = s->overflow = s->peer_bad = s->peer_overflow = 0u;
  s->call_err = s->abort = 0u;
}

const char* bad_kind_name(unsigned kind) {
  switch (kind) {
    case kBadExpertRange: return "an expert id outside [-1, experts)";
    case kBadDuplicate: return "the same expert twice in one token";
    case kBadNanWeight: return "a NaN weight";
    default: return "a bad value";
  }
}

// The report of a status read after the stream was synchronized.
int32_t report(DecodeEngine* d, const DecodeStatus& s) {
  weft_comm* c = d->comm;
  const PlanHost& p = d->plan;
  if (s.timeout != 0u) {
    char why[256];
    snprintf(why, sizeof why, "rank(s) %s did not reach a decode barrier of rank %d within %d ms",
             rank_list(s.timeout).c_str(), p.rank, c->timeout_ms);
    comm_mark_broken(c, WEFT_ERR_TIMEOUT, why);
    WEFT_FAIL_AT(WEFT_ERR_TIMEOUT, first_rank(s.timeout),
                 "%s: the process is dead or stuck, or did not make the same decode calls. The communicator is now "
                 "unusable: destroy it and create a new one",
                 why);
  }
  if (s.bad != 0u) {
    const unsigned long long pos = s.bad_key >> 4;
    const unsigned kind = static_cast<unsigned>(s.bad_key & 15ull);
    if (kind == kBadCapacity) {
      WEFT_FAIL_AT(WEFT_ERR_BAD_INPUT, p.rank,
                   "mode decode, rank %d: the step's token count (the device int at info.tokens) is outside [0, %d]: "
                   "write a count within the capacity; nothing of that step was written",
                   p.rank, d->cap);
    }
    const long long t = static_cast<long long>(pos / p.top_k), k = static_cast<long long>(pos % p.top_k);
    WEFT_FAIL_AT(WEFT_ERR_BAD_INPUT, p.rank,
                 "mode decode, rank %d: topk %s at token %lld, k %lld has %s: fix the router's output; every rank "
                 "skipped that step's writes",
                 p.rank, kind == kBadNanWeight ? "weights" : "idx", t, k, bad_kind_name(kind));
  }
  if (s.overflow != 0u) {
    const int l = static_cast<int>(s.over_key >> 32);
    const unsigned rows = static_cast<unsigned>(s.over_key & 0xffffffffull);
    const int slot = d->slot0 + l;
    WEFT_FAIL_AT(WEFT_ERR_CAPACITY, p.rank,
                 "mode decode, rank %d: local expert %d (expert %d) received %u rows, more than expertCapacity %d: "
                 "rows past it were dropped and that step's combine wrote nothing; pass a larger expertCapacity "
                 "(world x capacity = %lld never overflows)",
                 p.rank, l, p.slot_expert[slot], rows, d->ecap, static_cast<long long>(p.world) * d->cap);
  }
  if (s.peer_bad != 0u) {
    WEFT_FAIL_AT(WEFT_ERR_BAD_INPUT, first_rank(s.peer_bad),
                 "mode decode: rank(s) %s had bad input (see the error reported there); every rank skipped that "
                 "step's writes",
                 rank_list(s.peer_bad).c_str());
  }
  if (s.peer_overflow != 0u) {
    WEFT_FAIL_AT(WEFT_ERR_CAPACITY, first_rank(s.peer_overflow),
                 "mode decode: a local expert of rank(s) %s received more rows than expertCapacity %d (see the error "
                 "reported there); that step's combine wrote nothing; pass a larger expertCapacity",
                 rank_list(s.peer_overflow).c_str(), d->ecap);
  }
  return WEFT_OK;
}

int32_t check_locked(DecodeEngine* d) {
  weft_comm* c = d->comm;
  WEFT_TRY(comm_waited(c, cudaStreamSynchronize(c->stream)));
  DecodeStatus s{};
  WEFT_CUDA(cudaMemcpy(&s, d->d_status, sizeof s, cudaMemcpyDeviceToHost));
  DecodeStatus cleared = s;
  clear_errors(&cleared);
  cleared.timeout = s.timeout;  // a missing peer stays: the comm is broken
  WEFT_CUDA(cudaMemcpy(d->d_status, &cleared, sizeof cleared, cudaMemcpyHostToDevice));
  *d->h_mirror = cleared;
  return report(d, s);
}

// Entry of an enqueueing call. It does not look at the error state: ranks
// see a finished step's error at different host moments, and a call that
// enqueued on some ranks only would leave the others at a barrier. Errors
// are reported by weft_decode_check, where every rank waits for the same
// steps.
int32_t enter(DecodeEngine* d) {
  if (d == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the decode engine is NULL");
  if (d->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the decode engine was destroyed");
  return comm_enter(d->comm, true);
}

int32_t sizes(const weft_plan_desc* plan, int32_t expert_capacity, PlanHost* p, int* ecap) {
  WEFT_TRY(plan_from_desc(plan, p));
  return check_plan(*p, expert_capacity, ecap);
}

void free_engine(DecodeEngine* d) {
  cudaSetDevice(d->comm->device);
  for (int g = 0; g < d->n_graphs; ++g) cudaGraphExecDestroy(d->graphs[g]);
  if (d->block != nullptr) cudaFree(d->block);
  if (d->d_tables != nullptr) cudaFree(d->d_tables);
  if (d->h_mirror != nullptr) cudaFreeHost(d->h_mirror);
  (void)cudaGetLastError();
  comm_release(d->comm);
  delete d;
}

int32_t init(DecodeEngine* d) {
  weft_comm* c = d->comm;
  const std::vector<int> none;
  const int* unused = nullptr;
  WEFT_TRY(upload_route_tables(d->plan, none, &d->d_tables, &d->rt, &unused));
  void* b = nullptr;
  WEFT_CUDA(cudaMalloc(&b, d->lh.end));
  d->block = static_cast<uint8_t*>(b);
  d->d_status = reinterpret_cast<DecodeStatus*>(d->block + d->lh.status);
  void* h = nullptr;
  void* dv = nullptr;
  WEFT_TRY(alloc_mapped(sizeof(DecodeStatus), &h, &dv));
  d->h_mirror = static_cast<DecodeStatus*>(h);
  d->d_mirror = static_cast<DecodeStatus*>(dv);
  DecodeStatus s{};
  clear_errors(&s);
  *d->h_mirror = s;
  WEFT_CUDA(cudaMemcpy(d->d_status, &s, sizeof s, cudaMemcpyHostToDevice));
  WEFT_CUDA(cudaMemset(d->block + d->lh.counts, 0, static_cast<size_t>(d->local) * sizeof(int) + 4));
  // Every rank's token count 0 until a dispatch writes it: a combine before
  // any dispatch then pushes nothing (fan_rows is uninitialized memory).
  WEFT_CUDA(cudaMemset(d->block + d->lh.tokens, 0, static_cast<size_t>(d->plan.world) * sizeof(int)));
  WEFT_TRY(decode_prepare(d));
  // The decode barrier's flags start at 0 on every rank before any rank
  // uses them: a barrier so nobody still writes flags of an earlier decode
  // engine on this comm, the reset, and a barrier so nobody starts early.
  CommLock lock(c);
  WEFT_TRY(comm_settle(c));
  WEFT_TRY(comm_barrier_now(c, "weft_decode_create (before the flag reset)"));
  WEFT_CUDA(cudaMemset(c->heap + d->hh.ctl, 0, d->hh.x - d->hh.ctl));
  WEFT_CUDA(cudaDeviceSynchronize());
  return comm_barrier_now(c, "weft_decode_create (after the flag reset)");
}

}  // namespace

DecodeHeap decode_heap_layout(const PlanHost& p) {
  DecodeHeap h{};
  uint64_t off = kCommReserved;
  const uint64_t cap = static_cast<uint64_t>(p.max_tokens);
  const uint64_t pairs = cap * p.top_k * 4;
  h.ctl = take(&off, 16);
  h.flags = take(&off, 2ull * kMaxWorld * sizeof(uint64_t));
  h.x = take(&off, cap * p.row_bytes());
  h.idx = take(&off, pairs);
  h.w = take(&off, pairs);
  h.slot = take(&off, pairs);
  h.ord = take(&off, pairs);
  h.slot_count = take(&off, static_cast<uint64_t>(p.slots) * 4);
  h.landing = take(&off, static_cast<uint64_t>(p.world) * cap * p.wire_row_bytes());
  h.end = off;
  return h;
}

DecodeLocal decode_local_layout(const PlanHost& p, int ecap) {
  DecodeLocal l{};
  uint64_t off = 0;
  const uint64_t L = static_cast<uint64_t>(local_of(p));
  const uint64_t rows = L * static_cast<uint64_t>(ecap);
  const uint64_t cap = static_cast<uint64_t>(p.max_tokens);
  l.recv = take(&off, rows * p.row_bytes());
  l.out = take(&off, cap * p.row_bytes());
  l.recv_weights = take(&off, rows * 4);
  l.src_rank = take(&off, rows * 4);
  l.src_token = take(&off, rows * 4);
  l.src_k = take(&off, rows * 4);
  l.counts = take(&off, L * 4 + 4);
  l.bases = take(&off, static_cast<uint64_t>(p.world) * L * 4 + 4);
  l.tokens = take(&off, static_cast<uint64_t>(p.world) * 4);
  l.fan_rows = take(&off, static_cast<uint64_t>(p.world) * cap * p.top_k * 4);
  l.status = take(&off, sizeof(DecodeStatus));
  l.end = off;
  return l;
}

int32_t decode_heap_bytes(const weft_plan_desc* plan, int32_t expert_capacity, uint64_t* heap, uint64_t* device) {
  if (heap == nullptr || device == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "heap_out or device_out is NULL");
  PlanHost p;
  int ecap = 0;
  WEFT_TRY(sizes(plan, expert_capacity, &p, &ecap));
  *heap = decode_heap_layout(p).end;
  *device = decode_local_layout(p, ecap).end;
  return WEFT_OK;
}

int32_t decode_create(weft_comm_t c, const weft_plan_desc* plan, int32_t expert_capacity, DecodeEngine** out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  WEFT_TRY(comm_enter(c, true));
  if (c->nodes > 1) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank,
                 "mode decode needs one node (one NVLink/IPC domain); this communicator spans %d nodes, whose engine "
                 "exchanges counts through the host every call: use the default mode across nodes",
                 c->nodes);
  }
  PlanHost p;
  WEFT_TRY(plan_for_comm(plan, c, &p));
  int ecap = 0;
  WEFT_TRY(check_plan(p, expert_capacity, &ecap));
  const DecodeHeap hh = decode_heap_layout(p);
  if (hh.end > c->heap_bytes) {
    WEFT_FAIL_AT(WEFT_ERR_CAPACITY, c->rank,
                 "mode decode needs a symmetric heap of %llu bytes, the communicator has %llu: create it with "
                 "heapBytes >= DecodeEngine.footprint(...).heapBytes",
                 static_cast<unsigned long long>(hh.end), static_cast<unsigned long long>(c->heap_bytes));
  }
  DecodeEngine* d = new DecodeEngine();
  comm_retain(c);
  d->comm = c;
  d->plan = std::move(p);
  d->cap = d->plan.max_tokens;
  d->ecap = ecap;
  d->local = local_of(d->plan);
  d->slot0 = d->plan.slot_base[d->plan.rank];
  d->hh = hh;
  d->lh = decode_local_layout(d->plan, ecap);
  const int32_t rc = init(d);
  if (rc != WEFT_OK) {
    free_engine(d);
    return rc;
  }
  *out = d;
  return WEFT_OK;
}

int32_t decode_info(DecodeEngine* d, weft_decode_info* o) {
  if (d == nullptr || o == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the decode engine or out is NULL");
  if (d->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the decode engine was destroyed");
  uint8_t* heap = d->comm->heap;
  uint8_t* b = d->block;
  memset(o, 0, sizeof *o);
  o->max_tokens = d->cap;
  o->expert_capacity = d->ecap;
  o->local_experts = d->local;
  o->graphs = d->n_graphs;
  o->heap_bytes = d->hh.end;
  o->device_bytes = d->lh.end;
  o->x = heap + d->hh.x;
  o->topk_idx = reinterpret_cast<int32_t*>(heap + d->hh.idx);
  o->topk_weights = reinterpret_cast<float*>(heap + d->hh.w);
  o->tokens = reinterpret_cast<int32_t*>(heap + d->hh.ctl);
  o->recv = b + d->lh.recv;
  o->recv_weights = reinterpret_cast<float*>(b + d->lh.recv_weights);
  o->expert_counts = reinterpret_cast<int32_t*>(b + d->lh.counts);
  o->src_rank = reinterpret_cast<int32_t*>(b + d->lh.src_rank);
  o->src_token = reinterpret_cast<int32_t*>(b + d->lh.src_token);
  o->src_k = reinterpret_cast<int32_t*>(b + d->lh.src_k);
  o->out = b + d->lh.out;
  o->stream = d->comm->stream;
  return WEFT_OK;
}

int32_t decode_dispatch(DecodeEngine* d) {
  WEFT_TRY(enter(d));
  CommLock lock(d->comm);
  WEFT_TRY(decode_enqueue_dispatch(d, d->comm->stream));
  if (d->capturing && d->cap_first == 0) d->cap_first = 1;
  d->last_part = 1;
  return WEFT_OK;
}

int32_t decode_combine(DecodeEngine* d, const void* y, void* out) {
  WEFT_TRY(enter(d));
  const uintptr_t bits = reinterpret_cast<uintptr_t>(y) | reinterpret_cast<uintptr_t>(out);
  if ((bits & 15u) != 0u) WEFT_FAIL_AT(WEFT_ERR_INVALID, d->plan.rank, "y and out must be 16-byte aligned");
  if (d->last_part == 2) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, d->plan.rank,
                 "mode decode, rank %d: combine follows a combine; each combine needs a dispatch after the previous "
                 "combine (its barrier orders the next partials after the home's reduce): dispatch first",
                 d->plan.rank);
  }
  CommLock lock(d->comm);
  WEFT_TRY(decode_enqueue_combine(d, d->comm->stream, y != nullptr ? y : d->block + d->lh.recv,
                                  out != nullptr ? out : d->block + d->lh.out));
  if (d->capturing && d->cap_first == 0) d->cap_first = 2;
  d->last_part = 2;
  return WEFT_OK;
}

int32_t decode_capture_begin(DecodeEngine* d) {
  WEFT_TRY(enter(d));
  if (d->capturing) WEFT_FAIL(WEFT_ERR_INVALID, "a capture is already running: call weft_decode_capture_end");
  if (d->n_graphs == kDecodeMaxGraphs) {
    WEFT_FAIL(WEFT_ERR_CAPACITY, "this decode engine holds %d graphs already (the most)", kDecodeMaxGraphs);
  }
  CommLock lock(d->comm);
  WEFT_TRY(comm_settle(d->comm));
  // Relaxed: the calls that enqueue into the capture may come from other
  // threads (Deno's pool), and none of them may be refused for it.
  WEFT_CUDA(cudaStreamBeginCapture(d->comm->stream, cudaStreamCaptureModeRelaxed));
  d->capturing = true;
  // What runs before a replay is unknown here: the graph's parts are checked
  // at replay (graph_first, graph_last).
  d->saved_part = d->last_part;
  d->last_part = 0;
  d->cap_first = 0;
  return WEFT_OK;
}

int32_t decode_capture_end(DecodeEngine* d, int32_t* graph) {
  if (d == nullptr || graph == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the decode engine or graph is NULL");
  if (!d->capturing) WEFT_FAIL(WEFT_ERR_INVALID, "no capture is running: call weft_decode_capture_begin first");
  WEFT_CUDA(cudaSetDevice(d->comm->device));
  CommLock lock(d->comm);
  d->capturing = false;
  const int first = d->cap_first, last = d->last_part;
  d->last_part = d->saved_part;  // nothing captured has run
  cudaGraph_t g = nullptr;
  WEFT_CUDA(cudaStreamEndCapture(d->comm->stream, &g));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  WEFT_CUDA(e);
  d->graphs[d->n_graphs] = exec;
  d->graph_first[d->n_graphs] = first;
  d->graph_last[d->n_graphs] = last;
  *graph = d->n_graphs++;
  return WEFT_OK;
}

int32_t decode_replay(DecodeEngine* d, int32_t graph) {
  WEFT_TRY(enter(d));
  if (d->capturing) WEFT_FAIL(WEFT_ERR_INVALID, "a capture is running: end it before replaying");
  if (graph < 0 || graph >= d->n_graphs) {
    WEFT_FAIL(WEFT_ERR_INVALID, "graph %d: this engine has %d captured graphs", graph, d->n_graphs);
  }
  if (d->graph_first[graph] == 2 && d->last_part == 2) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, d->plan.rank,
                 "mode decode, rank %d: graph %d starts with a combine and the last part enqueued was a combine; each "
                 "combine needs a dispatch after the previous combine: replay a dispatch first",
                 d->plan.rank, graph);
  }
  CommLock lock(d->comm);
  WEFT_CUDA(cudaGraphLaunch(d->graphs[graph], d->comm->stream));
  if (d->graph_last[graph] != 0) d->last_part = d->graph_last[graph];
  return WEFT_OK;
}

int32_t decode_check(DecodeEngine* d) {
  if (d == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the decode engine is NULL");
  if (d->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the decode engine was destroyed");
  if (d->capturing) WEFT_FAIL(WEFT_ERR_INVALID, "a capture is running: end it before checking");
  WEFT_TRY(comm_enter(d->comm, true));
  CommLock lock(d->comm);
  return check_locked(d);
}

int32_t decode_destroy(DecodeEngine* d) {
  if (d == nullptr) return WEFT_OK;
  if (d->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the decode engine was already destroyed");
  d->closed = true;
  cudaSetDevice(d->comm->device);
  if (d->capturing) {
    cudaGraph_t g = nullptr;
    if (cudaStreamEndCapture(d->comm->stream, &g) == cudaSuccess && g != nullptr) cudaGraphDestroy(g);
  }
  cudaStreamSynchronize(d->comm->stream);
  free_engine(d);
  return WEFT_OK;
}

}  // namespace weft
