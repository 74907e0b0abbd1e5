// Finds and loads libnccl at run time (see nccl_loader.h).
//
// Order: $WEFT_NCCL_PATH (a file, or a folder holding libnccl.so.2), then the
// system's "libnccl.so.2", then the nvidia/nccl/lib folder of a Python wheel
// in the usual site-packages folders ($VIRTUAL_ENV, /usr/local/lib,
// /usr/lib, /opt/*/.venv, ~/.local).
#include "nccl_loader.h"

#include <dlfcn.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <mutex>
#include <string>
#include <vector>

#include "common.h"
#include "settings.h"

namespace weft {
namespace {

std::once_flag g_once;
NcclApi g_api;
bool g_loaded = false;
std::string g_failure;

bool is_dir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> candidates() {
  std::vector<std::string> out;
  if (const char* env = setting_text(Setting::kNcclPath); env[0] != '\0') {
    std::string p(env);
    out.push_back(is_dir(p) ? p + "/libnccl.so.2" : p);
  }
  out.push_back("libnccl.so.2");
  std::vector<std::string> patterns;
  if (const char* venv = setting_text(Setting::kVirtualEnv); venv[0] != '\0') {
    patterns.push_back(std::string(venv) + "/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2");
  }
  patterns.push_back("/usr/local/lib/python3*/dist-packages/nvidia/nccl/lib/libnccl.so.2");
  patterns.push_back("/usr/local/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2");
  patterns.push_back("/usr/lib/python3/dist-packages/nvidia/nccl/lib/libnccl.so.2");
  patterns.push_back("/usr/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2");
  patterns.push_back("/opt/*/.venv/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2");
  patterns.push_back("/opt/*/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2");
  if (const char* home = setting_text(Setting::kHome); home[0] != '\0') {
    patterns.push_back(std::string(home) + "/.local/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2");
  }
  for (const std::string& pat : patterns) {
    glob_t g;
    memset(&g, 0, sizeof g);
    if (glob(pat.c_str(), 0, nullptr, &g) == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) out.push_back(g.gl_pathv[i]);
    }
    globfree(&g);
  }
  return out;
}

template <typename F>
bool bind(void* lib, const char* name, F* slot, bool required, std::string* missing) {
  void* sym = dlsym(lib, name);
  *slot = reinterpret_cast<F>(sym);
  if (sym == nullptr && required) {
    if (!missing->empty()) *missing += ", ";
    *missing += name;
  }
  return sym != nullptr || !required;
}

void load_once() {
  std::string tried;
  for (const std::string& path : candidates()) {
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* why = dlerror();
      tried += "\n  " + path + ": " + (why ? why : "not found");
      continue;
    }
    NcclApi api;
    memset(&api, 0, sizeof api);
    std::string missing;
    bind(lib, "ncclGetVersion", &api.GetVersion, true, &missing);
    bind(lib, "ncclGetUniqueId", &api.GetUniqueId, true, &missing);
    bind(lib, "ncclCommInitRank", &api.CommInitRank, true, &missing);
    bind(lib, "ncclCommInitRankConfig", &api.CommInitRankConfig, false, &missing);
    bind(lib, "ncclCommFinalize", &api.CommFinalize, false, &missing);
    bind(lib, "ncclCommDestroy", &api.CommDestroy, true, &missing);
    bind(lib, "ncclCommAbort", &api.CommAbort, true, &missing);
    bind(lib, "ncclCommGetAsyncError", &api.CommGetAsyncError, true, &missing);
    bind(lib, "ncclSend", &api.Send, true, &missing);
    bind(lib, "ncclRecv", &api.Recv, true, &missing);
    bind(lib, "ncclAllGather", &api.AllGather, true, &missing);
    bind(lib, "ncclGroupStart", &api.GroupStart, true, &missing);
    bind(lib, "ncclGroupEnd", &api.GroupEnd, true, &missing);
    bind(lib, "ncclGetErrorString", &api.GetErrorString, true, &missing);
    if (!missing.empty()) {
      tried += "\n  " + path + ": lacks " + missing + " (NCCL older than 2.7?)";
      dlclose(lib);
      continue;
    }
    int version = 0;
    if (api.GetVersion(&version) != ncclSuccess) version = 0;
    api.version = version;
    snprintf(api.path, sizeof api.path, "%s", path.c_str());
    g_api = api;
    g_loaded = true;
    debug_log("loaded NCCL %d from %s", version, path.c_str());
    return;  // the library stays loaded for the life of the process
  }
  g_failure = "cannot load NCCL; tried:" + tried +
              "\nInstall NCCL 2.x (libnccl.so.2) or set WEFT_NCCL_PATH to its file or folder.";
}

}  // namespace

const NcclApi* nccl_api() {
  std::call_once(g_once, load_once);
  if (!g_loaded) {
    set_error("%s", g_failure.c_str());
    return nullptr;
  }
  return &g_api;
}


int32_t nccl_available(int32_t* out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nccl_api() != nullptr ? 1 : 0;
  return WEFT_OK;
}

int32_t nccl_unique_id(uint8_t* out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL (needs 128 bytes)");
  const NcclApi* api = nccl_api();
  if (api == nullptr) return WEFT_ERR_NCCL;
  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  ncclResult_t r = api->GetUniqueId(&id);
  if (r != ncclSuccess) {
    WEFT_FAIL(WEFT_ERR_NCCL, "ncclGetUniqueId failed: %s", api->GetErrorString(r));
  }
  memcpy(out, id.internal, sizeof id.internal);
  return WEFT_OK;
}

}  // namespace weft
