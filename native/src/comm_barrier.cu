// weft_comm's bounded barrier over the symmetric heap, the call status, and
// the queued tails of calls that returned before their work ended.
//
// Barrier protocol. Every heap starts with flags[2][kMaxWorld] (uint64). The
// host numbers barriers 1, 2, 3, … (the same sequence on every rank). At
// barrier e, rank r writes (e << 1 | err) into flags[e & 1][r] of every rank
// (its own included) with a system-scope release store, then spins with
// acquire loads on its own flags[e & 1][p] for every p until each shows an
// epoch ≥ e, or until the timeout (read from %globaltimer) passes. A rank can
// run at most one barrier ahead of a peer (it cannot pass e+1 before the peer
// arrives at e+1), so the parity slot of epoch e holds e or e-2 and never
// loses an error bit to a later barrier. The error bit carries "my input was
// bad" to every rank, so all ranks fail the call together; a peer that never
// arrives is reported by rank, and the comm is marked broken.
#include <stdio.h>

#include <string>

#include "comm.h"

namespace weft {
namespace {

// epoch_at, when not null, holds the epoch (written by an earlier kernel of
// the call), so that a captured graph can replay the launch. publish, when
// not null, receives the status once the barrier is done (a call's end
// barrier: its tail's slot in mapped host memory).
__global__ void __launch_bounds__(32) barrier_kernel(PeerTable peers, int rank, int world, uint64_t epoch,
                                                     const uint64_t* epoch_at, uint64_t timeout_ns, DevStatus* st,
                                                     DevStatus* publish) {
  const int lane = threadIdx.x;
  if (epoch_at != nullptr) epoch = *epoch_at;
  // A peer already failed to arrive in this call: waiting again would only
  // double the time to the error.
  if (ld_volatile_u32(&st->timeout_mask) != 0u) {
    if (lane == 0 && publish != nullptr) publish_status(st, publish);
    return;
  }
  const unsigned err = (ld_volatile_u32(&st->local_bad) | ld_volatile_u32(&st->internal)) != 0u ? 1u : 0u;
  // Make this rank's earlier writes (its own kernels' remote stores included)
  // visible system-wide before announcing arrival.
  __threadfence_system();
  if (lane < world) {
    uint64_t* slot = reinterpret_cast<uint64_t*>(peers.base[lane] + flag_offset(epoch, rank));
    st_release_sys_u64(slot, (epoch << 1) | err);
  }
  bool arrived = true;
  bool peer_err = false;
  if (lane < world) {
    const uint64_t* flag = reinterpret_cast<const uint64_t*>(peers.base[rank] + flag_offset(epoch, lane));
    const uint64_t start = globaltimer_ns();
    arrived = false;
    while (true) {
      const uint64_t v = ld_acquire_sys_u64(flag);
      if ((v >> 1) >= epoch) {
        arrived = true;
        peer_err = (v & 1ull) != 0ull;
        break;
      }
      if (globaltimer_ns() - start > timeout_ns) break;
    }
  }
  const unsigned missing = __ballot_sync(0xffffffffu, !arrived);
  const unsigned errs = __ballot_sync(0xffffffffu, peer_err);
  if (lane == 0) {
    if (errs != 0u) atomicOr(&st->peer_err_mask, errs);
    if (missing != 0u) atomicOr(&st->timeout_mask, missing);
    if ((errs | missing) != 0u) atomicExch(&st->abort, 1u);
    // Every write to st of this call is done: earlier kernels have ended,
    // and this one's were made by this thread.
    if (publish != nullptr) publish_status(st, publish);
  }
}

__global__ void reset_status_kernel(DevStatus* st) { reset_status(st); }

__global__ void report_bad_kernel(DevStatus* st, unsigned long long pos, unsigned kind) { report_bad(st, pos, kind); }

}  // namespace

int32_t comm_reset_status(weft_comm* c) {
  reset_status_kernel<<<1, 1, 0, c->stream>>>(c->d_status);
  WEFT_LAUNCHED("reset_status", c->stream);
  return WEFT_OK;
}

int32_t comm_report_bad(weft_comm* c, unsigned long long pos, unsigned kind) {
  report_bad_kernel<<<1, 1, 0, c->stream>>>(c->d_status, pos, kind);
  WEFT_LAUNCHED("report_bad", c->stream);
  return WEFT_OK;
}

int32_t comm_barrier_async(weft_comm* c, const char* stage) {
  c->epoch += 1;
  debug_log("rank %d barrier %llu (%s)", c->rank, static_cast<unsigned long long>(c->epoch), stage);
  return comm_barrier_at(c, c->stream, nullptr);
}

int32_t comm_barrier_at(weft_comm* c, cudaStream_t s, const uint64_t* epoch_at, DevStatus* publish) {
  const uint64_t timeout_ns = static_cast<uint64_t>(c->timeout_ms) * 1000000ull;
  // The barrier spans this rank's node: flags and masks by local rank.
  barrier_kernel<<<1, 32, 0, s>>>(c->peers, c->local_rank, c->local_world, epoch_at != nullptr ? 0 : c->epoch, epoch_at,
                                  timeout_ns, c->d_status, publish);
  WEFT_LAUNCHED("barrier", s);
  return WEFT_OK;
}

int32_t comm_waited(weft_comm* c, cudaError_t e) {
  if (e == cudaSuccess) return WEFT_OK;
  comm_mark_broken(c, WEFT_ERR_CUDA, cudaGetErrorString(e));
  WEFT_FAIL_AT(WEFT_ERR_CUDA, c->rank, "rank %d: a kernel failed: %s (%s)", c->rank, cudaGetErrorName(e),
               cudaGetErrorString(e));
}

int32_t comm_sync_status(weft_comm* c) {
  WEFT_CUDA(cudaMemcpyAsync(c->h_status, c->d_status, sizeof(DevStatus), cudaMemcpyDeviceToHost, c->stream));
  return comm_waited(c, cudaStreamSynchronize(c->stream));
}

int32_t comm_barrier_now(weft_comm* c, const char* stage) {
  WEFT_TRY(comm_reset_status(c));
  WEFT_TRY(comm_barrier_async(c, stage));
  WEFT_TRY(comm_sync_status(c));
  return comm_check_peers(c, stage);
}

namespace {

// Waits for the oldest queued tail, takes it off the queue and reports it.
int32_t settle_oldest(weft_comm* c) {
  const int slot = c->tail_head;
  weft_comm::Tail& t = c->tails[slot];
  const std::string stage = std::string(t.call) + " (its queued work, reported by a later call)";
  c->tail_head = (c->tail_head + 1) % weft_comm::kMaxTails;
  c->tail_count -= 1;
  t.call = nullptr;
  cudaError_t e = cudaEventSynchronize(t.done);
  if (e != cudaSuccess) {
    comm_mark_broken(c, WEFT_ERR_CUDA, cudaGetErrorString(e));
    WEFT_FAIL_AT(WEFT_ERR_CUDA, c->rank, "rank %d: a kernel of %s failed: %s (%s)", c->rank, stage.c_str(),
                 cudaGetErrorName(e), cudaGetErrorString(e));
  }
  *c->h_status = c->h_tail_status[slot];
  return comm_check_peers(c, stage.c_str());
}

}  // namespace

int32_t comm_end_with_barrier(weft_comm* c, const char* barrier_stage, const char* call, const char* stage,
                              bool queue) {
  if (!queue) {
    WEFT_TRY(comm_barrier_async(c, barrier_stage));
    c->profile.mark(c->stream, "barrier: end");
    const int32_t rc = comm_sync_status(c);
    c->profile.end(c->stream);
    return rc != WEFT_OK ? rc : comm_check_peers(c, stage);
  }
  if (c->tail_count == weft_comm::kMaxTails) WEFT_TRY(settle_oldest(c));
  const int slot = (c->tail_head + c->tail_count) % weft_comm::kMaxTails;
  c->epoch += 1;
  debug_log("rank %d barrier %llu (%s)", c->rank, static_cast<unsigned long long>(c->epoch), barrier_stage);
  // The barrier itself writes the status into the tail's slot: no copy on
  // the stream between this call and the next.
  WEFT_TRY(comm_barrier_at(c, c->stream, nullptr, c->d_tail_status + slot));
  c->profile.mark(c->stream, "barrier: end");
  WEFT_CUDA(cudaEventRecord(c->tails[slot].done, c->stream));
  c->tails[slot].call = call;
  c->tail_count += 1;
  c->profile.end(c->stream);
  return WEFT_OK;
}

int32_t comm_check_not_begun(weft_comm* c) {
  if (c->begun.call != nullptr) {
    WEFT_FAIL(WEFT_ERR_INVALID, "a %s was begun (weft_dispatch_begin) and not finished: call weft_dispatch_finish first",
              c->begun.call);
  }
  return WEFT_OK;
}

int32_t comm_settle(weft_comm* c) {
  WEFT_TRY(comm_check_not_begun(c));
  while (c->tail_count > 0) WEFT_TRY(settle_oldest(c));
  c->profile.flush();
  return WEFT_OK;
}

int32_t comm_check_peers(weft_comm* c, const char* stage) {
  const DevStatus& s = *c->h_status;
  if (s.timeout_mask != 0u) {
    char why[512];
    snprintf(why, sizeof why, "rank(s) %s did not reach the %s barrier of rank %d within %d ms",
             node_rank_list(c, s.timeout_mask).c_str(), stage, c->rank, c->timeout_ms);
    comm_mark_broken(c, WEFT_ERR_TIMEOUT, why);
    WEFT_FAIL_AT(WEFT_ERR_TIMEOUT, node_first_rank(c, s.timeout_mask),
              "%s: the process is dead or stuck, or did not make the same collective call. "
              "This communicator is now unusable: destroy it and create a new one",
              why);
  }
  if (s.local_bad != 0u) return WEFT_OK;  // the caller describes its own bad input
  if (s.internal != 0u) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank,
              "internal error on rank %d during %s: a layout index fell outside its buffer "
              "(a weft bug; rerun with WEFT_DEBUG=1 and report it). Nothing was written to the outputs",
              c->rank, stage);
  }
  const unsigned others = s.peer_err_mask & ~(1u << c->local_rank);
  if (others != 0u) {
    WEFT_FAIL_AT(WEFT_ERR_BAD_INPUT, node_first_rank(c, others),
              "rank(s) %s failed during %s (bad input, or out of memory: see the error reported on those "
              "ranks); every rank failed the call and nothing was written to the outputs",
              node_rank_list(c, others).c_str(), stage);
  }
  return WEFT_OK;
}

}  // namespace weft
