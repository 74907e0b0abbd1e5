// Opt-in phase timing for optimisation work (WEFT_PROFILE=1): CUDA events at
// the phase boundaries of dispatch and combine, on the comm stream, so the
// differences include the GPU idle time while the host works between
// launches. Each phase's time is summed per call kind; the gap between one
// call's end and the next call's start (the caller's host time) is a phase
// too. Printed per rank to stderr when the communicator is destroyed, as the
// median over calls (warm-up calls pay one-time costs a mean would smear). When
// off, every hook is one branch on a flag read once.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <map>
#include <vector>
#include <string>

namespace weft {

class PhaseProfile {
 public:
  static bool enabled() {
    static const bool on = [] {
      const char* v = std::getenv("WEFT_PROFILE");
      return v != nullptr && v[0] != '\0' && v[0] != '0';
    }();
    return on;
  }

  // Starts a call: records its first event (and the gap since the last call).
  void begin(cudaStream_t s, const char* call) {
    if (!ensure()) return;
    call_ = call;
    n_ = 0;
    names_[n_] = "start";
    cudaEventRecord(ev_[n_++], s);
  }

  // Closes the phase that ran since the previous mark.
  void mark(cudaStream_t s, const char* phase) {
    if (ev_[0] == nullptr || call_ == nullptr || n_ >= kMax) return;
    names_[n_] = phase;
    cudaEventRecord(ev_[n_++], s);
  }

  // After the call's stream synchronization: accumulate the phases, and mark
  // "now" on the idle stream so the next call can measure the host gap.
  void end(cudaStream_t s) {
    if (ev_[0] == nullptr || call_ == nullptr) return;
    if (have_last_ && cudaEventSynchronize(ev_[0]) == cudaSuccess) {
      add(std::string(call_) + " | (host gap before)", elapsed(last_, ev_[0]));
    }
    for (int i = 1; i < n_; ++i) add(std::string(call_) + " | " + names_[i], elapsed(ev_[i - 1], ev_[i]));
    add(std::string(call_) + " | = total", elapsed(ev_[0], ev_[n_ - 1]));
    have_last_ = cudaEventRecord(last_, s) == cudaSuccess;
    call_ = nullptr;
  }

  void print(int rank) const {
    for (const auto& [name, v] : samples_) {
      std::vector<double> sorted = v;
      std::sort(sorted.begin(), sorted.end());
      std::fprintf(stderr, "[weft profile rank %d] %-44s %8.3f ms median of %zu\n", rank, name.c_str(),
                   sorted[sorted.size() / 2], sorted.size());
    }
  }

  ~PhaseProfile() {
    for (cudaEvent_t& e : ev_) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    if (last_ != nullptr) cudaEventDestroy(last_);
  }

 private:
  static constexpr int kMax = 16;

  bool ensure() {
    if (!enabled()) return false;
    if (ev_[0] != nullptr) return true;
    for (cudaEvent_t& e : ev_) {
      if (cudaEventCreate(&e) != cudaSuccess) return false;
    }
    return cudaEventCreate(&last_) == cudaSuccess;
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

  cudaEvent_t ev_[kMax] = {};
  const char* names_[kMax] = {};
  int n_ = 0;
  const char* call_ = nullptr;
  cudaEvent_t last_ = nullptr;
  bool have_last_ = false;
  std::map<std::string, std::vector<double>> samples_;
};

}  // namespace weft
