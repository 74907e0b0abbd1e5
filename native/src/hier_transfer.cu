// Hierarchical dispatch steps 3-5 (HIER_PROTOCOL) once a batch's tables are
// built: pack, the sliced NCCL transfer to the forwarders, the fan-out.
//   side stream   pack slice j (rows for every remote node, payload + meta)
//                 → event;
//   comm stream   waits for pack j, ncclSend/ncclRecv slice j to/from the
//                 forwarders (one group per slice): packing j+1 overlaps the
//                 network transfer of j; no host sync per slice.
// The fan-out, WEFT_HIER_FANOUT:
//   slice (default)  after its step j the comm stream stores "slice j of this
//                 call landed" into this rank's heap (landed_kernel). The fan
//                 stream runs a node barrier (the own node's sources' staged
//                 x and routing are published), fan_local, then for each j,
//                 after this rank's own step j, fan_remote of slice j, whose
//                 blocks first wait for the landed flags of the forwarders
//                 holding slice j's rows: the fan-out of slice j runs while
//                 NCCL moves slice j+1. The comm stream waits for the fan
//                 stream before the end barrier.
//   after         node barrier after the last slice, then the whole fan-out
//                 on the comm stream.
// Kernels of the fan-out: hier_fanout.cu.
#include <algorithm>

#include "hier_move.h"

namespace weft {
namespace {

struct PackArgs {
  const uint8_t* xq;  // rows (or E4M3 bytes) of this rank's tokens
  const uint8_t* xs;  // scales (quantized) or null
  uint64_t recv_row, scale_row, payload, stride;
  const int* slot;
  const int* ord;
  const float* w;
  const int* slot_rank;
  const int* send_tok;
  const int* send_seg;  // [N][3]
  uint8_t* send;
  int K, gpn, slice, j;
  const DevStatus* st;
};

// Slice j of every remote node's segment: a warp per packed row.
__global__ void __launch_bounds__(32 * kWarps) pack_kernel(PackArgs a) {
  if (call_aborted(a.st)) return;
  const int m = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int i = a.j * a.slice + blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int off = a.send_seg[m * 3], rows = a.send_seg[m * 3 + 1];
  if (i >= rows || i >= (a.j + 1) * a.slice) return;
  const int t = a.send_tok[off + i];
  uint8_t* row = a.send + static_cast<uint64_t>(off + i) * a.stride;
  warp_copy16(row, a.xq + static_cast<uint64_t>(t) * a.recv_row, a.recv_row, lane);
  if (a.scale_row > 0) warp_copy4(row + a.recv_row, a.xs + static_cast<uint64_t>(t) * a.scale_row, a.scale_row, lane);
  int* meta = reinterpret_cast<int*>(row + a.payload);
  if (lane == 0) meta[0] = t;
  if (lane < a.K) {
    const long long p = static_cast<long long>(t) * a.K + lane;
    const int s = a.slot[p];
    const bool here = s >= 0 && a.slot_rank[s] / a.gpn == m;
    meta[1 + 3 * lane] = here ? s : -1;
    meta[2 + 3 * lane] = a.ord[p];
    meta[3 + 3 * lane] = __float_as_int(a.w[p]);
  }
}

// After this rank's NCCL step j (stream order: every row it received in
// that step is written): the landed flag, released at system scope so that
// a node peer that reads it with an acquire also sees those rows. Always
// stored, an aborted call included: a flag says only that the step is done.
__global__ void landed_kernel(uint64_t* flag, uint64_t value) {
  __threadfence_system();
  st_release_sys_u64(flag, value);
}

// The landed value of step j of the call numbered `call`: monotone in (call,
// j), so a flag left by an earlier call or slice never reads as this one's
// (the waits compare with >=).
inline uint64_t landed_value(uint64_t call, int j) { return (call << 32) | static_cast<uint64_t>(j + 1); }

// Records an event of the engine's pool on `done` and makes `waits` wait for
// it; *next counts the events of this call.
int32_t hand_off(weft_engine* e, int* next, cudaStream_t done, cudaStream_t waits) {
  return hier_stream_wait(e, (*next)++, done, waits);
}

}  // namespace

int32_t hier_move(weft_engine* e, weft_handle* h, bool move_rows) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  HierEngine* he = e->hier;
  const HierLayout& hl = he->hl;
  HierHandle* hh = h->hier;
  const int C = he->slice;
  const int J = hier_slice_count(hh, C);
  const bool per_slice = he->fan_per_slice;
  const int JF = per_slice ? static_cast<int>(hh->fan_slices.size()) : 0;
  // The call's number: the barrier epoch before this call's barriers, the
  // same on every rank of the node (every rank issues the same barriers) and
  // larger in every later call (each issues at least one barrier).
  const uint64_t call = c->epoch + 1;
  int ev = 0;
  WEFT_TRY(hier_stream_wait(e, ev, c->stream, he->side));
  if (per_slice) WEFT_TRY(hier_stream_wait(e, ev, c->stream, he->fan));
  ++ev;
  auto body = [&]() -> int32_t {
    if (per_slice) {
      // The own node's sources staged x and routing on their comm streams
      // before this call's event 0: a node barrier publishes them (what the
      // barrier after the last slice did in `after`), then fan_local runs
      // while the transfer goes on.
      c->epoch += 1;
      debug_log("rank %d barrier %llu (dispatch staged, fan stream)", c->rank,
                static_cast<unsigned long long>(c->epoch));
      WEFT_TRY(comm_barrier_at(c, he->fan, nullptr));
      WEFT_TRY(hier_fan_local(e, h, move_rows, he->fan, he->fan_grid));
    }
    PackArgs pa;
    pa.xq = c->heap + hl.base.xq;
    pa.xs = p.fp8() ? c->heap + hl.base.xs : nullptr;
    pa.recv_row = p.recv_row_bytes();
    pa.scale_row = p.scale_row_bytes();
    pa.payload = hl.payload;
    pa.stride = hl.row_stride;
    pa.slot = hh->slot;
    pa.ord = hh->ord;
    pa.w = hh->w;
    pa.slot_rank = e->rt.slot_rank;
    pa.send_tok = hh->send_tok;
    pa.send_seg = hh->send_seg;
    pa.send = c->heap + hl.send;
    pa.K = p.top_k;
    pa.gpn = p.gpus_per_node;
    pa.slice = C;
    pa.st = c->d_status;
    uint8_t* send = c->heap + hl.send;
    uint8_t* stage = c->heap + hl.stage;
    uint64_t* landed = reinterpret_cast<uint64_t*>(c->heap + hl.landed);
    const uint64_t RS = hl.row_stride;
    for (int j = 0; j < std::max(J, JF); ++j) {
      if (j < J) {
        pa.j = j;
        if (hh->send_rows > 0) {
          dim3 grid(grid_for(C, kWarps), p.nodes());
          pack_kernel<<<grid, 32 * kWarps, 0, he->side>>>(pa);
          WEFT_LAUNCHED("hier pack", he->side);
        }
        WEFT_TRY(hand_off(e, &ev, he->side, c->stream));
        WEFT_TRY(hier_slice_transfer(c, c->stream, hh->send, send, hh->stage, stage, RS, C, j,
                                     {"ncclGroupStart (dispatch)", "ncclSend (dispatch rows)",
                                      "ncclRecv (dispatch rows)", "dispatch rows (NCCL group)"}));
        if (per_slice) {
          landed_kernel<<<1, 1, 0, c->stream>>>(landed, landed_value(call, j));
          WEFT_LAUNCHED("hier landed", c->stream);
        }
      }
      if (j < JF) {
        // Slice j's fan-out starts after this rank's own step j (or its last
        // step, j >= J), so it waits only for the node's forwarders' step j,
        // never for a step this GPU has still to run. Progress does not rest
        // on free SMs: step j of every rank needs only its peers' step j
        // kernels, which no fan-out kernel can hold back (a rank's fan-out of
        // slice j' starts after its own step j' and one fan-out runs at a
        // time on its fan stream, so a fan-out that holds SMs while step j
        // waits for them is one of a slice j' < j, which ends once step j'
        // has landed everywhere: by induction on j every flag is published).
        // The bounded grid (fan_grid, hier_engine.cu) leaves room on the SMs
        // for the pack and NCCL kernels meanwhile, so the overlap need not
        // wait for the fan-out's blocks to retire; the spin pauses
        // (__nanosleep) for contexts that share the GPU.
        WEFT_TRY(hand_off(e, &ev, c->stream, he->fan));
        WEFT_TRY(hier_fan_remote(e, h, move_rows, hh->fan_slices[j], landed_value(call, j), he->fan,
                                 he->fan_grid));
      }
    }
    return WEFT_OK;
  };
  const int32_t rc = body();
  // A failed hand-off can leave a pack kernel the comm stream does not wait
  // for, reading the handle's arrays that the caller frees next: wait for it
  // (pack kernels never wait on a peer).
  if (rc != WEFT_OK) (void)cudaStreamSynchronize(he->side);
  if (per_slice) {
    // Whatever happened, the comm stream goes on after the fan stream, so
    // that the end barrier, the host's wait and freeing a failed handle (a
    // sync of the comm stream) all come after every fan-out kernel.
    const int32_t jr = hand_off(e, &ev, he->fan, c->stream);
    // Without the join the caller's free of the handle could race the fan
    // kernels: wait here (bounded: they give up at the comm's timeout).
    if (jr != WEFT_OK) (void)cudaStreamSynchronize(he->fan);
    return rc != WEFT_OK ? rc : jr;
  }
  WEFT_TRY(rc);
  // `after`: every forwarder's staging is complete and visible after this barrier.
  WEFT_TRY(comm_barrier_async(c, "dispatch staged (node)"));
  WEFT_TRY(hier_fan_remote(e, h, move_rows, hh->fan_all, 0ull, c->stream, ~0u));
  return hier_fan_local(e, h, move_rows, c->stream, ~0u);
}

}  // namespace weft
