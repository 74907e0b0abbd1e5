// The last-error message (and the rank it names), and debug logging.
//
// Deno runs `nonblocking` FFI calls on a thread pool, so the thread that asks
// for the message is usually not the one that failed: a thread-local message
// would be lost. weft_last_error therefore returns the most recent failure in
// the process (one process drives one GPU, and the TS side awaits each call
// before it reads the message). The name of the running API call is kept per
// thread, to prefix messages.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>
#include <string>

#include "common.h"
#include "settings.h"

namespace weft {
namespace {

thread_local const char* t_api_name = nullptr;
std::mutex g_error_mu;
std::string g_last_error;
int32_t g_last_rank = -1;  // the rank g_last_error names as failing, -1 none

void record(int32_t rank, const char* fmt, va_list ap) {
  char body[2048];
  vsnprintf(body, sizeof body, fmt, ap);
  std::string msg = t_api_name ? std::string(t_api_name) + ": " + body : std::string(body);
  {
    std::lock_guard<std::mutex> lock(g_error_mu);
    g_last_error = msg;
    g_last_rank = rank;
  }
  if (debug_enabled()) fprintf(stderr, "[weft] error: %s\n", msg.c_str());
}

}  // namespace

ApiScope::ApiScope(const char* name) : prev(t_api_name) { t_api_name = name; }
ApiScope::~ApiScope() { t_api_name = prev; }

void set_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  record(-1, fmt, ap);
  va_end(ap);
}

void set_error_at(int32_t rank, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  record(rank, fmt, ap);
  va_end(ap);
}

int32_t last_error_rank() {
  std::lock_guard<std::mutex> lock(g_error_mu);
  return g_last_rank;
}

bool debug_enabled() {
  static const bool on = setting_on(Setting::kDebug);
  return on;
}

void debug_log(const char* fmt, ...) {
  if (!debug_enabled()) return;
  char body[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  fprintf(stderr, "[weft] %s%s%s\n", t_api_name ? t_api_name : "", t_api_name ? ": " : "", body);
}

int32_t last_error(char* buf, int32_t len) {
  std::string msg;
  {
    std::lock_guard<std::mutex> lock(g_error_mu);
    msg = g_last_error;
  }
  if (buf != nullptr && len > 0) {
    size_t n = msg.size() < static_cast<size_t>(len - 1) ? msg.size() : static_cast<size_t>(len - 1);
    memcpy(buf, msg.data(), n);
    buf[n] = '\0';
  }
  return static_cast<int32_t>(msg.size());
}

}  // namespace weft
