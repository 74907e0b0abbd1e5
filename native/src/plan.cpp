// Checking a weft_plan_desc, and the heap layout it implies.
#include <string.h>

#include <string>
#include <vector>

#include "carve.h"
#include "engine.h"
#include "hier.h"

namespace weft {
namespace {

bool copy_table(const int32_t* src, size_t n, std::vector<int>* dst) {
  if (n > 0 && src == nullptr) return false;
  dst->assign(src, src + n);
  return true;
}

}  // namespace

int32_t plan_from_desc(const weft_plan_desc* d, PlanHost* out) {
  if (d == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "plan is NULL");
  PlanHost p;
  p.world = d->world;
  p.rank = d->rank;
  p.gpus_per_node = d->gpus_per_node;
  p.experts = d->experts;
  p.top_k = d->top_k;
  p.hidden = d->hidden;
  p.dtype = d->dtype;
  p.dedupe = d->dedupe;
  p.receive = d->receive;
  p.combine = d->combine;
  p.max_tokens = d->max_tokens;
  p.wire_f32 = d->combine_wire_f32;
  p.quantize = d->quantize;
  p.balance = d->balance;

  if (p.world < 1 || p.world > kMaxHierWorld) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.world = %d; must be in [1, %d]", p.world, kMaxHierWorld);
  }
  if (p.rank < 0 || p.rank >= p.world) WEFT_FAIL(WEFT_ERR_INVALID, "plan.rank = %d; must be in [0, world = %d)", p.rank, p.world);
  if (p.gpus_per_node < 1 || p.world % p.gpus_per_node != 0) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.gpus_per_node = %d; must be >= 1 and divide world = %d", p.gpus_per_node, p.world);
  }
  if (p.gpus_per_node > kMaxWorld) {
    WEFT_FAIL(WEFT_ERR_INVALID,
              "plan.gpus_per_node = %d (world %d); a node holds at most %d ranks (the NVLink engine's limit): a "
              "world of more than %d ranks must span several nodes (gpusPerNode <= %d)",
              p.gpus_per_node, p.world, kMaxWorld, kMaxWorld, kMaxWorld);
  }
  if (p.experts < 1) WEFT_FAIL(WEFT_ERR_INVALID, "plan.experts = %d; must be >= 1", p.experts);
  if (p.top_k < 1 || p.top_k > kMaxTopK) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.top_k = %d; the NVLink engine supports 1..%d", p.top_k, kMaxTopK);
  }
  if (p.hidden < 8 || p.hidden % 8 != 0) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.hidden = %d; must be a positive multiple of 8 (rows move in 16-byte vectors)", p.hidden);
  }
  if (p.dtype != WEFT_BF16 && p.dtype != WEFT_F16 && p.dtype != WEFT_F32) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.dtype = %d; must be WEFT_BF16, WEFT_F16 or WEFT_F32", p.dtype);
  }
  if (p.dedupe != WEFT_DEDUPE_NONE && p.dedupe != WEFT_DEDUPE_DEVICE && p.dedupe != WEFT_DEDUPE_NODE) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.dedupe = %d; must be a WEFT_DEDUPE_* code", p.dedupe);
  }
  if (p.receive != WEFT_EXPERT_MAJOR && p.receive != WEFT_RANK_MAJOR) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.receive = %d; must be WEFT_EXPERT_MAJOR or WEFT_RANK_MAJOR", p.receive);
  }
  if (p.combine != WEFT_WEIGHTED && p.combine != WEFT_SUM) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.combine = %d; must be WEFT_WEIGHTED or WEFT_SUM", p.combine);
  }
  if (p.wire_f32 != 0 && p.wire_f32 != 1) WEFT_FAIL(WEFT_ERR_INVALID, "plan.combine_wire_f32 = %d; must be 0 or 1", p.wire_f32);
  if (p.quantize != WEFT_QUANTIZE_NONE && p.quantize != WEFT_QUANTIZE_E4M3) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.quantize = %d; must be WEFT_QUANTIZE_NONE or WEFT_QUANTIZE_E4M3", p.quantize);
  }
  if (p.balance != WEFT_BALANCE_RAIL && p.balance != WEFT_BALANCE_GREEDY) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.balance = %d; must be WEFT_BALANCE_RAIL (0) or WEFT_BALANCE_GREEDY (1)", p.balance);
  }
  if (p.fp8() && p.hidden % WEFT_QUANT_BLOCK != 0) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.hidden = %d; quantize E4M3 scales blocks of %d elements, so hidden must be a multiple of %d",
              p.hidden, WEFT_QUANT_BLOCK, WEFT_QUANT_BLOCK);
  }
  if (p.max_tokens < 0) WEFT_FAIL(WEFT_ERR_INVALID, "plan.max_tokens = %d; must be >= 0", p.max_tokens);
  // Receive rows and (rank, token, k) indices are int32.
  const long long most_rows = static_cast<long long>(p.world) * p.max_tokens * p.top_k;
  if (most_rows >= (1ll << 31)) {
    WEFT_FAIL(WEFT_ERR_INVALID, "world x max_tokens x top_k = %lld; must stay below 2^31", most_rows);
  }

  if (!copy_table(d->local_experts, p.world, &p.local_experts)) WEFT_FAIL(WEFT_ERR_INVALID, "plan.local_experts is NULL");
  if (!copy_table(d->slot_base, p.world + 1, &p.slot_base)) WEFT_FAIL(WEFT_ERR_INVALID, "plan.slot_base is NULL");
  if (p.slot_base[0] != 0) WEFT_FAIL(WEFT_ERR_INVALID, "plan.slot_base[0] = %d; must be 0", p.slot_base[0]);
  for (int r = 0; r < p.world; ++r) {
    if (p.local_experts[r] < 0) WEFT_FAIL(WEFT_ERR_INVALID, "plan.local_experts[%d] = %d is negative", r, p.local_experts[r]);
    if (p.slot_base[r + 1] != p.slot_base[r] + p.local_experts[r]) {
      WEFT_FAIL(WEFT_ERR_INVALID, "plan.slot_base[%d] = %d; must equal slot_base[%d] + local_experts[%d] = %d", r + 1,
                p.slot_base[r + 1], r, r, p.slot_base[r] + p.local_experts[r]);
    }
    if (p.local_experts[r] > p.max_local) p.max_local = p.local_experts[r];
  }
  p.slots = p.slot_base[p.world];
  if (p.slots < 1) WEFT_FAIL(WEFT_ERR_INVALID, "the plan has no expert slots (slot_base[world] = 0)");
  if (!copy_table(d->slot_expert, p.slots, &p.slot_expert)) WEFT_FAIL(WEFT_ERR_INVALID, "plan.slot_expert is NULL");
  if (!copy_table(d->replica_start, p.experts + 1, &p.replica_start)) WEFT_FAIL(WEFT_ERR_INVALID, "plan.replica_start is NULL");
  if (p.replica_start[0] != 0) WEFT_FAIL(WEFT_ERR_INVALID, "plan.replica_start[0] = %d; must be 0", p.replica_start[0]);
  for (int e = 0; e < p.experts; ++e) {
    if (p.replica_start[e + 1] <= p.replica_start[e]) {
      WEFT_FAIL(WEFT_ERR_INVALID, "expert %d has no slot (replica_start[%d] = %d, replica_start[%d] = %d)", e, e,
                p.replica_start[e], e + 1, p.replica_start[e + 1]);
    }
  }
  const int nrep = p.replica_start[p.experts];
  if (nrep != p.slots) {
    WEFT_FAIL(WEFT_ERR_INVALID, "replica_start[experts] = %d; every slot must be listed once, so it must equal slots = %d",
              nrep, p.slots);
  }
  if (!copy_table(d->replica_slots, nrep, &p.replica_slots)) WEFT_FAIL(WEFT_ERR_INVALID, "plan.replica_slots is NULL");

  p.slot_rank.assign(p.slots, -1);
  for (int r = 0; r < p.world; ++r) {
    for (int s = p.slot_base[r]; s < p.slot_base[r + 1]; ++s) p.slot_rank[s] = r;
  }
  std::vector<char> seen(p.slots, 0);
  for (int s = 0; s < p.slots; ++s) {
    if (p.slot_expert[s] < 0 || p.slot_expert[s] >= p.experts) {
      WEFT_FAIL(WEFT_ERR_INVALID, "plan.slot_expert[%d] = %d is not an expert id in [0, %d)", s, p.slot_expert[s], p.experts);
    }
  }
  for (int e = 0; e < p.experts; ++e) {
    int prev_rank = -1;
    for (int i = p.replica_start[e]; i < p.replica_start[e + 1]; ++i) {
      const int s = p.replica_slots[i];
      if (s < 0 || s >= p.slots) WEFT_FAIL(WEFT_ERR_INVALID, "plan.replica_slots[%d] = %d is not a slot in [0, %d)", i, s, p.slots);
      if (p.slot_expert[s] != e) {
        WEFT_FAIL(WEFT_ERR_INVALID, "plan.replica_slots[%d] = slot %d holds expert %d, but is listed for expert %d", i, s,
                  p.slot_expert[s], e);
      }
      if (seen[s]) WEFT_FAIL(WEFT_ERR_INVALID, "slot %d is listed twice in plan.replica_slots", s);
      seen[s] = 1;
      if (p.slot_rank[s] <= prev_rank) {
        WEFT_FAIL(WEFT_ERR_INVALID, "the replicas of expert %d must be on distinct ranks in ascending order", e);
      }
      prev_rank = p.slot_rank[s];
    }
  }
  *out = std::move(p);
  return WEFT_OK;
}

int32_t plan_for_comm(const weft_plan_desc* d, const weft_comm* c, PlanHost* out) {
  WEFT_TRY(plan_from_desc(d, out));
  if (out->world != c->world || out->rank != c->rank) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank, "the plan is for rank %d of %d, the communicator is rank %d of %d",
                 out->rank, out->world, c->rank, c->world);
  }
  return WEFT_OK;
}

int32_t upload_route_tables(const PlanHost& p, const std::vector<int>& extra, int** block, RouteTables* rt,
                            const int** extra_at) {
  std::vector<int> all;
  all.insert(all.end(), p.slot_rank.begin(), p.slot_rank.end());
  all.insert(all.end(), p.replica_start.begin(), p.replica_start.end());
  all.insert(all.end(), p.replica_slots.begin(), p.replica_slots.end());
  all.insert(all.end(), extra.begin(), extra.end());
  void* d = nullptr;
  WEFT_CUDA(cudaMalloc(&d, all.size() * sizeof(int)));
  *block = static_cast<int*>(d);
  WEFT_CUDA(cudaMemcpy(*block, all.data(), all.size() * sizeof(int), cudaMemcpyHostToDevice));
  rt->slot_rank = *block;
  rt->replica_start = rt->slot_rank + p.slot_rank.size();
  rt->replica_slots = rt->replica_start + p.replica_start.size();
  rt->experts = p.experts;
  rt->top_k = p.top_k;
  rt->gpus_per_node = p.gpus_per_node;
  if (extra_at != nullptr) *extra_at = rt->replica_slots + p.replica_slots.size();
  return WEFT_OK;
}

void carve_staging(const PlanHost& p, HeapCarve& take, HeapLayout* h) {
  const uint64_t T = static_cast<uint64_t>(p.max_tokens);
  const uint64_t pairs = T * static_cast<uint64_t>(p.top_k);
  h->meta = take(16);
  h->x = take(T * p.row_bytes());
  h->xq = p.fp8() ? take(T * p.recv_row_bytes()) : h->x;
  h->xs = p.fp8() ? take(T * p.scale_row_bytes()) : h->x;
  h->idx = take(pairs * 4);
  h->w = take(pairs * 4);
  h->slot = take(pairs * 4);
  h->ord = take(pairs * 4);
}

HeapLayout heap_layout(const PlanHost& p) {
  HeapLayout h;
  HeapCarve take;
  const uint64_t T = static_cast<uint64_t>(p.max_tokens);
  carve_staging(p, take, &h);
  h.dmask = take(T * 4);
  h.slot_count = take(static_cast<uint64_t>(p.slots) * 4);
  // landing_by_source needs world <= top_k, so world = parts rows a token either way.
  h.landing = take(T * static_cast<uint64_t>(p.parts()) * p.wire_row_bytes());
  h.end = align256(take.off);
  return h;
}


int32_t engine_heap_bytes(const weft_plan_desc* plan, uint64_t* out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  PlanHost p;
  WEFT_TRY(plan_from_desc(plan, &p));
  *out = p.nodes() > 1 ? hier_heap_layout(p).end : heap_layout(p).end;
  return WEFT_OK;
}

}  // namespace weft
