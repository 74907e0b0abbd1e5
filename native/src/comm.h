// The communicator: device, stream, symmetric heap mapped into every peer
// (comm.cu), the bounded barrier over that heap (comm_barrier.cu), and the
// optional NCCL communicator (comm_nccl.cu).
#pragma once

#include <atomic>
#include <mutex>
#include <string>

#include "common.h"
#include "nccl_loader.h"
#include "profile.h"

namespace weft {

// The first kCommReserved bytes of every heap belong to the communicator:
//   [0, 512)     barrier flags: uint64 flags[2][kMaxWorld], indexed by the
//                epoch's parity and the arriving rank;
//   [512, 576)   HeapHeader, written at creation and checked by every peer.
// Engines carve their regions from kCommReserved on.
constexpr uint64_t kFlagsOffset = 0;
constexpr uint64_t kHeaderOffset = 512;
constexpr uint64_t kCommReserved = 4096;
constexpr uint64_t kHeapMagic = 0x3166746665770a01ull;

// world and rank are the node's: local_world and local_rank (the whole
// world and the rank itself on one node).
struct HeapHeader {
  uint64_t magic;
  uint64_t heap_bytes;
  int32_t world;
  int32_t rank;
};

__host__ __device__ inline uint64_t flag_offset(uint64_t epoch, int src_rank) {
  return kFlagsOffset + ((epoch & 1ull) * kMaxWorld + static_cast<uint64_t>(src_rank)) * sizeof(uint64_t);
}

}  // namespace weft

struct weft_comm {
  int device = -1;
  int rank = 0;
  int world = 1;
  // Topology (weft_comm_create2): ranks node*local_world .. +local_world-1
  // form this rank's node. The symmetric heap, the peer table and the
  // barrier span the node only (indexed by local rank); ranks of other
  // nodes are reached through NCCL. One node: local_rank = rank,
  // local_world = world.
  int node = 0;
  int nodes = 1;
  int local_rank = 0;
  int local_world = 1;
  int timeout_ms = 0;
  int num_sms = 0;             // multiprocessors to use for data kernels
  int cc_major = 0;            // compute capability (9 = Hopper: bulk-copy pull available)
  size_t smem_optin = 0;       // largest dynamic shared memory a block may opt into
  cudaStream_t stream = nullptr;

  uint8_t* heap = nullptr;     // this rank's symmetric heap
  uint64_t heap_bytes = 0;
  weft::PeerTable peers{};     // every node rank's heap as mapped here, by local rank
  bool peers_open = false;
  uint64_t epoch = 0;          // barriers issued so far (same sequence on every rank)

  weft::DevStatus* d_status = nullptr;  // device
  weft::DevStatus* h_status = nullptr;  // pinned host mirror

  // Stream-ordered returns: a collective call that got past its last host
  // decision enqueues the rest (data movement, end barrier, which
  // also writes the status into the tail's own host slot), records an event and returns. Tails queue
  // up here, oldest first; later calls enqueue behind them without waiting.
  // They are checked, in order, where a call waits for the stream anyway
  // (weft_dispatch_finish's one sync), or must (weft_comm_sync, barriers,
  // the timer, the baseline): the same call on every rank, so every rank
  // reports a tail's failure at the same point.
  struct Tail {
    const char* call = nullptr;
    cudaEvent_t done = nullptr;
  };
  static constexpr int kMaxTails = 4;
  Tail tails[kMaxTails];
  weft::DevStatus* h_tail_status = nullptr;  // pinned and mapped, one slot per tail
  weft::DevStatus* d_tail_status = nullptr;  // the same slots as the device addresses them
  int tail_head = 0;                         // oldest queued tail
  int tail_count = 0;

  // A dispatch split in two (weft_dispatch_begin / _finish): what the first
  // half left for the second. call is null when none is begun.
  struct Begun {
    const char* call = nullptr;
    int tokens = 0;
    bool move_rows = false;
  } begun;

  weft::ncclComm_t nccl = nullptr;
  const weft::NcclApi* nccl_api = nullptr;

  std::mutex mu;               // one collective call at a time
  std::atomic<int> refs{1};    // the comm itself plus every engine, handle, baseline, timer
  bool closed = false;         // weft_comm_destroy was called
  int32_t broken = WEFT_OK;    // nonzero after a failure that left ranks out of step
  std::string broken_why;
  weft::PhaseProfile profile;  // WEFT_PROFILE=1 only
};

namespace weft {

// "0, 2, 3": the ranks of a mask, for messages; first_rank: the lowest, -1 none.
std::string rank_list(unsigned mask);
int first_rank(unsigned mask);
// The same for a mask of local ranks (barrier masks), named by global rank.
std::string node_rank_list(const weft_comm* c, unsigned mask);
int node_first_rank(const weft_comm* c, unsigned mask);

void comm_retain(weft_comm* c);
void comm_release(weft_comm* c);  // frees everything when the last reference goes

// Entry checks of a collective call: open, not broken, peers mapped. Sets the device.
int32_t comm_enter(weft_comm* c, bool need_peers);
// Marks the comm unusable (ranks out of step); later collectives fail fast.
void comm_mark_broken(weft_comm* c, int32_t code, const char* why);

// Resets the device status for a new call (on the comm stream).
int32_t comm_reset_status(weft_comm* c);
// Sets this rank's error bit from the host side (bad argument found on the host).
int32_t comm_report_bad(weft_comm* c, unsigned long long pos, unsigned kind);
// Enqueues one bounded barrier. `stage` names it in timeout messages.
int32_t comm_barrier_async(weft_comm* c, const char* stage);
// The barrier kernel alone, on stream s: with epoch_at null, for epoch
// c->epoch (the caller has counted it); otherwise for the epoch an earlier
// kernel wrote at epoch_at (a launch a CUDA graph can replay).
// publish, when not null, receives the status after the barrier (mapped host memory).
int32_t comm_barrier_at(weft_comm* c, cudaStream_t s, const uint64_t* epoch_at, DevStatus* publish = nullptr);
// Synchronizes the comm stream and copies the device status to c->h_status.
int32_t comm_sync_status(weft_comm* c);
// The result of a host wait on this comm's work (a stream or event sync): a
// failed kernel breaks the comm and is reported.
int32_t comm_waited(weft_comm* c, cudaError_t e);
// A barrier the host waits for (status reset, barrier, sync, peer check).
int32_t comm_barrier_now(weft_comm* c, const char* stage);
// Ends a collective call with its last barrier (named `barrier_stage`).
// queue: the call's outcome is for later: the barrier writes the status into
// the tail's slot (mapped host memory) and the tail, named `call`, is queued
// for comm_settle (settling the oldest first when the queue is full).
// Otherwise (the call already failed on this rank) waits for the stream and
// reports a peer's failure or timeout, naming `stage`. Closes the profile.
int32_t comm_end_with_barrier(weft_comm* c, const char* barrier_stage, const char* call, const char* stage,
                              bool queue);
// Waits for every queued tail and reports, oldest first, what went wrong in
// it (peer timeout, a peer's failure, a kernel fault). Called under the lock.
int32_t comm_settle(weft_comm* c);
// Fails when a dispatch was begun and not finished (every entry point but
// weft_dispatch_finish checks it).
int32_t comm_check_not_begun(weft_comm* c);
// Turns a timeout or a peer's error bit in c->h_status into a status code and
// message. Returns WEFT_OK when neither happened (local bad input is left to
// the caller, which knows how to describe it).
int32_t comm_check_peers(weft_comm* c, const char* stage);

// comm_nccl.cu. NCCL init (nonblocking where the library allows, bounded)
// and its end (finalize, or abort after a failure), for the comm's lifetime.
int32_t nccl_init(weft_comm* c, const uint8_t* id_bytes);
void nccl_finish(weft_comm* c);
// Waits for the comm stream while watching NCCL for an asynchronous error;
// aborts NCCL and returns WEFT_ERR_TIMEOUT after the comm's timeout.
int32_t comm_nccl_stream_wait(weft_comm* c, const char* what);
// After ncclGroupEnd: waits until a nonblocking NCCL comm has enqueued the group.
int32_t comm_nccl_group_end(weft_comm* c, const char* what);
int32_t comm_nccl_check(weft_comm* c, ncclResult_t r, const char* what);

// Page-locked host memory the device can write (and read) directly: `host`
// for the CPU, `device` for kernels. Zeroed. Freed with cudaFreeHost(host).
int32_t alloc_mapped(size_t bytes, void** host, void** device);

// Bytes of the heap available to engines (after the comm's reserved area).
inline uint64_t comm_engine_bytes(const weft_comm* c) {
  return c->heap_bytes > kCommReserved ? c->heap_bytes - kCommReserved : 0;
}

// The communicator's C ABI calls (comm.cu; comm_nccl_event_wait: comm_nccl.cu), wrapped by api_comm.cu.
int32_t comm_create(int32_t device, int32_t rank, int32_t world, const uint8_t* nccl_id, uint64_t heap_bytes,
                    int32_t timeout_ms, weft_comm_t* out);
int32_t comm_create2(int32_t device, int32_t rank, int32_t world, int32_t local_rank, int32_t local_world,
                     const uint8_t* nccl_id, uint64_t heap_bytes, int32_t timeout_ms, weft_comm_t* out);
// Waits for an event while watching NCCL (like comm_nccl_stream_wait).
int32_t comm_nccl_event_wait(weft_comm* c, cudaEvent_t ev, const char* what);
int32_t comm_ipc_handle(weft_comm_t c, uint8_t* out);
int32_t comm_open_peers(weft_comm_t c, const uint8_t* handles);
int32_t comm_barrier(weft_comm_t c);
int32_t comm_sync(weft_comm_t c);
int32_t comm_destroy(weft_comm_t c);

// RAII: holds the comm's call lock.
struct CommLock {
  explicit CommLock(weft_comm* c) : lock(c->mu) {}
  std::lock_guard<std::mutex> lock;
};

}  // namespace weft
