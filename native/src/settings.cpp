// The table of settings (settings.h): the only place native/src reads the
// environment. Values are read once, on first use, so a setting cannot
// change under a running engine.
#include "settings.h"

#include <stdlib.h>
#include <string.h>

#include <mutex>
#include <string>

namespace weft {
namespace {

constexpr int kCount = static_cast<int>(Setting::kCount);

// Keep in the order of the Setting enum; native/README.md lists the same rows.
const SettingInfo kTable[kCount] = {
    {"WEFT_NCCL_PATH", "",
     "libnccl.so.2 to load (a file, or a folder holding it), tried before the usual places", "user"},
    {"WEFT_DEBUG", "0",
     "1: synchronize and check after every kernel, log stages and errors to stderr (slow); also turns off the "
     "layout's CUDA graphs",
     "user"},
    {"WEFT_SMS", "",
     "use at most this many SMs for the data kernels (pull, push, reduce); unset: all of them", "developer"},
    {"WEFT_PROFILE", "0",
     "1: time the phases of dispatch and combine with CUDA events, print medians per rank to stderr when the "
     "communicator is destroyed",
     "developer"},
    {"WEFT_PULL", "",
     "sm: pull rows with SM loads, never the Hopper bulk-copy (TMA) pull; GPUs before sm_90 always use SM loads",
     "developer"},
    {"WEFT_GRAPH", "1", "0: launch the layout's kernels directly instead of replaying them as CUDA graphs",
     "developer"},
    {"WEFT_HIER_SLICE", "512",
     "rows per slice of the hierarchical (multi-node) engine's NCCL transfers: packing slice j+1 overlaps sending "
     "slice j; any value >= 1 gives the same result",
     "developer"},
    {"WEFT_HIER_FANOUT", "slice",
     "when the hierarchical engine's dispatch fans rows out inside the node: slice: each slice as soon as it has "
     "landed at its forwarder, while the next one moves; after: all of them after a node barrier that follows the "
     "last slice (the earlier behaviour); any other value is taken as slice. Every rank must use the same value",
     "developer"},
    {"VIRTUAL_ENV", "", "a Python virtual environment searched for pip's nvidia-nccl libnccl.so.2", "system"},
    {"HOME", "", "~/.local is searched for pip's nvidia-nccl libnccl.so.2", "system"},
};

std::once_flag g_once;
std::string g_values[kCount];

void read_all() {
  for (int i = 0; i < kCount; ++i) {
    const char* v = getenv(kTable[i].name);
    g_values[i] = (v != nullptr && v[0] != '\0') ? std::string(v) : std::string(kTable[i].fallback);
  }
}

}  // namespace

const SettingInfo& setting_info(Setting s) { return kTable[static_cast<int>(s)]; }

const char* setting_text(Setting s) {
  std::call_once(g_once, read_all);
  return g_values[static_cast<int>(s)].c_str();
}

int setting_int(Setting s) {
  const char* v = setting_text(s);
  if (v[0] == '\0') return 0;
  char* end = nullptr;
  const long n = strtol(v, &end, 10);
  return (end != nullptr && *end == '\0' && n > 0 && n < 1000000) ? static_cast<int>(n) : 0;
}

bool setting_on(Setting s) {
  const char* v = setting_text(s);
  return v[0] != '\0' && strcmp(v, "0") != 0;
}

}  // namespace weft
