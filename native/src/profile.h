// Opt-in phase timing for optimisation work (WEFT_PROFILE=1): CUDA events at
// the phase boundaries of dispatch and combine, on the comm stream, so the
// differences include the GPU idle time while the host works between
// launches. Each phase's time is summed per call kind; the GPU idle time
// between one call's last event and the next call's first is a phase too.
// Printed per rank to stderr when the communicator is destroyed, as the median
// over calls (warm-up calls pay one-time costs a mean would smear). When off,
// every hook is one branch on a flag read once.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <map>
#include <vector>
#include <string>

#include "settings.h"

namespace weft {

class PhaseProfile {
 public:
  static bool enabled() {
    static const bool on = setting_on(Setting::kProfile);
    return on;
  }

  // Starts a call: accounts the call two back (calls return before their
  // tails run, so the one just before may still be on the GPU), then records
  // this call's first event.
  void begin(cudaStream_t s, const char* call) {
    if (!ensure()) return;
    if (n_calls_ >= 2) flush_call(n_calls_ - 2);
    Call& c = calls_[n_calls_ % kSlots];
    c.name = call;
    c.n = 0;
    c.pending = false;
    c.names[c.n] = "start";
    cudaEventRecord(c.ev[c.n++], s);
    ++n_calls_;
  }

  // Closes the phase that ran since the previous mark.
  void mark(cudaStream_t s, const char* phase) {
    if (n_calls_ == 0) return;
    Call& c = calls_[(n_calls_ - 1) % kSlots];
    if (c.ev[0] == nullptr || c.name == nullptr || c.n >= kMax) return;
    c.names[c.n] = phase;
    cudaEventRecord(c.ev[c.n++], s);
  }

  // The call has enqueued its last phase; flush_call reads its events later.
  void end(cudaStream_t) {
    if (n_calls_ == 0) return;
    Call& c = calls_[(n_calls_ - 1) % kSlots];
    if (c.ev[0] == nullptr || c.name == nullptr) return;
    c.pending = true;
  }

  // Host time: the time since the previous lap, as a phase of its own
  // (named "host | <key>"); `key` null only restarts the clock.
  void host_lap(const char* key) {
    if (!enabled()) return;
    const auto now = std::chrono::steady_clock::now();
    if (key != nullptr && lap_started_) {
      add(std::string("host | ") + key, std::chrono::duration<double, std::milli>(now - last_lap_).count());
    }
    last_lap_ = now;
    lap_started_ = true;
  }

  // Accounts every ended call (after a full synchronization).
  void flush() {
    for (long long k = std::max(0LL, n_calls_ - 2); k < n_calls_; ++k) flush_call(k);
  }

  void print(int rank) {
    flush();
    for (const auto& [name, v] : samples_) {
      std::vector<double> sorted = v;
      std::sort(sorted.begin(), sorted.end());
      std::fprintf(stderr, "[weft profile rank %d] %-44s %8.3f ms median of %zu\n", rank, name.c_str(),
                   sorted[sorted.size() / 2], sorted.size());
    }
  }

  ~PhaseProfile() {
    for (Call& c : calls_) {
      for (cudaEvent_t& e : c.ev) {
        if (e != nullptr) cudaEventDestroy(e);
      }
    }
  }

 private:
  static constexpr int kMax = 16;
  static constexpr int kSlots = 4;  // call k is accounted before slot k % 4 is reused, with call k-1 still intact

  struct Call {
    cudaEvent_t ev[kMax] = {};
    const char* names[kMax] = {};
    int n = 0;
    const char* name = nullptr;
    bool pending = false;  // ended, not yet accounted
  };

  // Accounts call k: its phases, and the GPU idle gap between the end of
  // call k-1 and its start (the caller's host time no GPU work covered).
  // Waits for the call's last event.
  void flush_call(long long k) {
    Call& c = calls_[k % kSlots];
    if (!c.pending) return;
    c.pending = false;
    if (cudaEventSynchronize(c.ev[c.n - 1]) != cudaSuccess) {
      (void)cudaGetLastError();
      return;
    }
    if (k >= 1) {
      const Call& prev = calls_[(k - 1) % kSlots];
      if (prev.n > 0) add(std::string(c.name) + " | (GPU idle before)", elapsed(prev.ev[prev.n - 1], c.ev[0]));
    }
    for (int i = 1; i < c.n; ++i) add(std::string(c.name) + " | " + c.names[i], elapsed(c.ev[i - 1], c.ev[i]));
    add(std::string(c.name) + " | = total", elapsed(c.ev[0], c.ev[c.n - 1]));
  }

  bool ensure() {
    if (!enabled()) return false;
    if (calls_[0].ev[0] != nullptr) return true;
    for (Call& c : calls_) {
      for (cudaEvent_t& e : c.ev) {
        if (cudaEventCreate(&e) != cudaSuccess) return false;
      }
    }
    return true;
  }

  static double elapsed(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0.f;
    if (cudaEventElapsedTime(&ms, a, b) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0.0;
    }
    return ms;
  }

  void add(const std::string& key, double ms) { samples_[key].push_back(ms); }

  Call calls_[kSlots];
  long long n_calls_ = 0;
  std::chrono::steady_clock::time_point last_lap_{};
  bool lap_started_ = false;
  std::map<std::string, std::vector<double>> samples_;
};

}  // namespace weft
