// Every environment variable the native library reads, in one declared table
// (settings.cpp): name, default, meaning, and who sets it. Each is read once,
// the first time any setting is asked for; nothing else in native/src calls
// getenv. native/README.md's "Environment" section is this table.
#pragma once

namespace weft {

enum class Setting : int {
  kNcclPath,    // WEFT_NCCL_PATH
  kDebug,       // WEFT_DEBUG
  kSms,         // WEFT_SMS
  kProfile,     // WEFT_PROFILE
  kPull,        // WEFT_PULL
  kGraph,       // WEFT_GRAPH
  kHierSlice,   // WEFT_HIER_SLICE
  kHierFanout,  // WEFT_HIER_FANOUT
  kVirtualEnv,  // VIRTUAL_ENV (where NCCL may be installed)
  kHome,        // HOME (likewise)
  kCount,
};

struct SettingInfo {
  const char* name;
  const char* fallback;  // the value when unset or empty ("" = unset)
  const char* meaning;
  const char* who;       // "user", "developer" or "system"
};

// The table entry of a setting.
const SettingInfo& setting_info(Setting s);
// The setting's value: the environment's (read once per process) when set
// and not empty, else its default ("" when it has none). Never null.
const char* setting_text(Setting s);
// The value as a positive integer, or 0 when it is not one (or unset).
int setting_int(Setting s);
// True when the value is set, not empty and not "0".
bool setting_on(Setting s);

}  // namespace weft
