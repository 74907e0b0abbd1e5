// The hierarchical engine's batch tables, computed on the host from the
// all-gathered records (bases exactly as computeLayout's, the forwarder
// table, the send/stage segments, the fan-out table cut by slice), the
// handle's memory and their upload.
#include <algorithm>
#include <vector>

#include "carve.h"
#include "hier.h"
#include "hier_balance.h"
#include "hier_slices.h"

namespace weft {

int32_t hier_build_handle(weft_engine* e, const int* g, weft_handle* h) {
  const PlanHost& p = e->plan;
  const HierLayout& hl = e->hier->hl;
  weft_comm* c = e->comm;
  HierHandle* hh = h->hier;
  const int W = p.world, S = p.slots, K = p.top_k, gpn = p.gpus_per_node, N = p.nodes();
  const int me = p.rank, my_node = me / gpn;
  const int RI = hl.rec_ints;
  auto T_of = [&](int r) { return g[static_cast<size_t>(r) * RI]; };
  auto cnt = [&](int r, int s) { return g[static_cast<size_t>(r) * RI + 4 + s]; };
  auto ncnt = [&](int r, int m) { return g[static_cast<size_t>(r) * RI + 4 + S + m]; };
  const int lo = p.slot_base[me], L = p.slot_base[me + 1] - lo;
  const bool em = p.receive == WEFT_EXPERT_MAJOR;

  // Per slot: total over ranks, and the part from ranks below this one.
  std::vector<long long> tot(S, 0), below(S, 0);
  for (int r = 0; r < W; ++r) {
    for (int s = 0; s < S; ++s) {
      const int v = cnt(r, s);
      tot[s] += v;
      if (r < me) below[s] += v;
    }
  }
  // base_self[σ]: the row of this rank's first pair of σ on σ's rank.
  std::vector<int> base_self(S, 0);
  for (int d = 0; d < W; ++d) {
    const int dlo = p.slot_base[d], dhi = p.slot_base[d + 1];
    long long run = 0;
    if (em) {
      for (int s = dlo; s < dhi; ++s) {
        base_self[s] = static_cast<int>(run + below[s]);
        run += tot[s];
      }
    } else {
      long long rows_below = 0;
      for (int s = dlo; s < dhi; ++s) rows_below += below[s];
      for (int s = dlo; s < dhi; ++s) {
        base_self[s] = static_cast<int>(rows_below + run);
        run += cnt(me, s);
      }
    }
  }
  // base_mine[s][l] for this rank's slots, R and the expert counts.
  std::vector<int> base_mine(static_cast<size_t>(W) * std::max(L, 1), 0);
  std::vector<int> counts(std::max(L, 1), 0);
  long long R = 0;
  for (int l = 0; l < L; ++l) counts[l] = static_cast<int>(tot[lo + l]);
  for (int l = 0; l < L; ++l) R += tot[lo + l];
  if (em) {
    long long run = 0;
    for (int l = 0; l < L; ++l) {
      long long col = run;
      for (int r = 0; r < W; ++r) {
        base_mine[static_cast<size_t>(r) * L + l] = static_cast<int>(col);
        col += cnt(r, lo + l);
      }
      run += tot[lo + l];
    }
  } else {
    long long run = 0;
    for (int r = 0; r < W; ++r) {
      for (int l = 0; l < L; ++l) {
        base_mine[static_cast<size_t>(r) * L + l] = static_cast<int>(run);
        run += cnt(r, lo + l);
      }
    }
  }
  if (R > 0x7fffffffLL) WEFT_FAIL_AT(WEFT_ERR_CAPACITY, me, "rank %d would receive %lld rows (> 2^31-1)", me, R);
  hh->R = static_cast<int>(R);
  h->recv_rows = hh->R;
  h->local_experts = L;

  // The forwarder table (hier_balance.h), the same on every rank: from each
  // rank's cross-node rows, all in the gathered records.
  std::vector<long long> load(W, 0);
  for (int r = 0; r < W; ++r) {
    for (int m = 0; m < N; ++m) {
      if (m != r / gpn) load[r] += ncnt(r, m);
    }
  }
  ForwarderTable ft;
  forwarder_table(p.balance, load.data(), W, gpn, &ft);
  const int my_group = ft.group[me];

  // Send segments (by remote node ascending) and the stage (sources of this
  // forwarder: its group's members on the other nodes, ascending).
  hh->send.clear();
  std::vector<int> send_seg(static_cast<size_t>(N) * 3, 0);
  int off = 0;
  for (int m = 0; m < N; ++m) {
    const int rows = m == my_node ? 0 : ncnt(me, m);
    send_seg[m * 3] = off;
    send_seg[m * 3 + 1] = rows;
    send_seg[m * 3 + 2] = m;
    if (m != my_node) hh->send.push_back({ft.forwarder(me, m), m, off, rows});
    off += rows;
  }
  hh->send_rows = off;
  hh->stage.clear();
  std::vector<int> stage_seg;
  off = 0;
  for (int m = 0; m < N; ++m) {
    if (m == my_node) continue;
    const int s = ft.member[static_cast<size_t>(m) * gpn + my_group];
    const int rows = ncnt(s, my_node);
    hh->stage.push_back({s, m, off, rows});
    stage_seg.push_back(off);
    stage_seg.push_back(rows);
    off += rows;
  }
  hh->stage_rows = off;
  // Fan-out: every forwarder of this node, its sources (its group's members
  // on the other nodes) ascending, in its staging order; cut by slice as the
  // transfer moves them (hier_slices.h), so each slice's rows can be fanned
  // out as soon as that step has landed.
  std::vector<FanStream> fan_streams;
  for (int lf = 0; lf < gpn; ++lf) {
    const int grp = ft.group[my_node * gpn + lf];
    int first = 0;
    for (int m = 0; m < N; ++m) {
      if (m == my_node) continue;
      const int s = ft.member[static_cast<size_t>(m) * gpn + grp];
      const int rows = ncnt(s, my_node);
      fan_streams.push_back({lf, s, first, rows});
      first += rows;
    }
  }
  FanTable fan;
  fan_slice_table(fan_streams, e->hier->slice, &fan);
  const std::vector<int>& fan_ent = fan.ent;
  const std::vector<int>& fan_prefix = fan.prefix;
  hh->fan_slices = fan.slices;
  hh->fan_all = fan.all();
  hh->n_fan = fan.pieces();
  hh->fan_rows = fan.rows();
  hh->node_tokens[0] = 0;
  for (int l = 0; l < gpn; ++l) hh->node_tokens[l + 1] = hh->node_tokens[l] + T_of(my_node * gpn + l);

  // One allocation for every array.
  const uint64_t TK = static_cast<uint64_t>(hh->T) * K;
  const uint64_t Rr = static_cast<uint64_t>(hh->R);
  Bump take;
  const uint64_t o_w8 = take(Rr * 4), o_cnt = take(static_cast<uint64_t>(std::max(L, 1)) * 4);
  const uint64_t o_sr = take(Rr * 4), o_st = take(Rr * 4), o_sk = take(Rr * 4), o_dr = take(TK * 4);
  const uint64_t o_slot = take(TK * 4), o_ord = take(TK * 4), o_w = take(TK * 4);
  const uint64_t o_stok = take(static_cast<uint64_t>(hh->send_rows) * 4);
  const uint64_t o_sseg = take(send_seg.size() * 4), o_gseg = take(stage_seg.size() * 4);
  const uint64_t o_pos = take(TK * 4), o_node = take(TK * 4), o_own = take(static_cast<uint64_t>(hh->T) * 4);
  const uint64_t o_bm = take(base_mine.size() * 4), o_bs = take(static_cast<uint64_t>(S) * 4);
  const uint64_t o_fe = take(fan_ent.size() * 4), o_fp = take(fan_prefix.size() * 4);
  const uint64_t o_cn = take(Rr * 4), o_ct = take(Rr * 4), o_ci = take(Rr * 4);
  const uint64_t o_np = take(static_cast<uint64_t>(hh->stage_rows) * 4);
  void* block = nullptr;
  cudaError_t err = cudaMalloc(&block, take.off);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    WEFT_FAIL_AT(WEFT_ERR_CAPACITY, me, "cannot allocate %llu bytes of dispatch index arrays on rank %d: %s",
                 static_cast<unsigned long long>(take.off), me, cudaGetErrorString(err));
  }
  hh->block = block;
  uint8_t* b = static_cast<uint8_t*>(block);
  h->recv_weights = reinterpret_cast<float*>(b + o_w8);
  h->expert_counts = reinterpret_cast<int*>(b + o_cnt);
  h->src_rank = reinterpret_cast<int*>(b + o_sr);
  h->src_token = reinterpret_cast<int*>(b + o_st);
  h->src_k = reinterpret_cast<int*>(b + o_sk);
  h->dest_row = reinterpret_cast<int*>(b + o_dr);
  hh->slot = reinterpret_cast<int*>(b + o_slot);
  hh->ord = reinterpret_cast<int*>(b + o_ord);
  hh->w = reinterpret_cast<float*>(b + o_w);
  hh->send_tok = reinterpret_cast<int*>(b + o_stok);
  hh->send_seg = reinterpret_cast<int*>(b + o_sseg);
  hh->stage_seg = reinterpret_cast<int*>(b + o_gseg);
  hh->pos_tk = reinterpret_cast<int*>(b + o_pos);
  hh->node_tk = reinterpret_cast<int*>(b + o_node);
  hh->ownmask = reinterpret_cast<unsigned*>(b + o_own);
  hh->base_mine = reinterpret_cast<int*>(b + o_bm);
  hh->base_self = reinterpret_cast<int*>(b + o_bs);
  hh->fan_ent = reinterpret_cast<int*>(b + o_fe);
  hh->fan_prefix = reinterpret_cast<int*>(b + o_fp);
  hh->comb_next = reinterpret_cast<int*>(b + o_cn);
  hh->comb_tgt = reinterpret_cast<int*>(b + o_ct);
  hh->comb_idx = reinterpret_cast<int*>(b + o_ci);
  hh->fwd_nparts = reinterpret_cast<int*>(b + o_np);
  // recv (and its scales) apart: the handle's accessors expect them at h->recv.
  const uint64_t recv_bytes = Rr * p.recv_row_bytes(), scale_bytes = Rr * p.scale_row_bytes();
  {
    // Never NULL, even for R = 0: the accessors hand recv out as a tensor.
    void* rv = nullptr;
    err = cudaMalloc(&rv, align256(recv_bytes) + scale_bytes + 256);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      WEFT_FAIL_AT(WEFT_ERR_CAPACITY, me, "cannot allocate %llu bytes for the dispatch outputs on rank %d (%d rows): %s",
                   static_cast<unsigned long long>(recv_bytes + scale_bytes), me, hh->R, cudaGetErrorString(err));
    }
    h->recv = rv;
    h->recv_scales = p.fp8() ? reinterpret_cast<float*>(static_cast<uint8_t*>(rv) + align256(recv_bytes)) : nullptr;
  }
  cudaStream_t s = c->stream;
  auto up = [&](void* dst, const void* src, size_t bytes) -> int32_t {
    if (bytes > 0) WEFT_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
    return WEFT_OK;
  };
  WEFT_TRY(up(h->expert_counts, counts.data(), static_cast<size_t>(L) * 4));
  WEFT_TRY(up(hh->send_seg, send_seg.data(), send_seg.size() * 4));
  WEFT_TRY(up(hh->stage_seg, stage_seg.data(), stage_seg.size() * 4));
  WEFT_TRY(up(hh->base_mine, base_mine.data(), base_mine.size() * 4));
  WEFT_TRY(up(hh->base_self, base_self.data(), base_self.size() * 4));
  WEFT_TRY(up(hh->fan_ent, fan_ent.data(), fan_ent.size() * 4));
  WEFT_TRY(up(hh->fan_prefix, fan_prefix.data(), fan_prefix.size() * 4));
  // Pageable sources: the copies above return once the data is staged, but
  // wait so the vectors may go (a few KB; this call syncs later anyway).
  WEFT_CUDA(cudaStreamSynchronize(s));
  return WEFT_OK;
}

}  // namespace weft
