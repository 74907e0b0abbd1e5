// The forwarder table of the hierarchical engine (HIER_PROTOCOL: f(s, m) =
// member[m*gpn + group[s]]), computed on the host by every rank from the
// gathered records, so all ranks agree without another exchange. Host-only
// C++ (no CUDA) so tests can build it alone: tests/balance_native_test.ts
// compiles it next to dsl/balance.ts and checks both give the same tables.
//
//   WEFT_BALANCE_RAIL    group = local index: f(s, m) = m*gpn + local(s).
//   WEFT_BALANCE_GREEDY  FUSCO's Algorithm 1: each node sorts its GPUs by
//                        descending cross-node load (ties: lower rank
//                        first), rotates the order left by its node index
//                        (position i takes sorted entry (i + m) mod gpn), and
//                        group i is position i of every node.
// Any other code is taken as rail here; plan.cpp rejects it before.
#pragma once

#include <algorithm>
#include <vector>

namespace weft {

struct ForwarderTable {
  int gpn = 1, nodes = 1;
  std::vector<int> group;   // [world] group of each rank
  std::vector<int> member;  // [nodes*gpn] rank of node m in group g at m*gpn + g
  int forwarder(int s, int m) const { return member[static_cast<size_t>(m) * gpn + group[s]]; }
};

// load[r]: rank r's cross-node send volume (rows; only the order matters).
inline void forwarder_table(int balance, const long long* load, int world, int gpn, ForwarderTable* out) {
  out->gpn = gpn;
  out->nodes = world / gpn;
  out->group.assign(world, 0);
  out->member.assign(world, 0);
  std::vector<int> ranks(gpn);
  for (int m = 0; m < out->nodes; ++m) {
    for (int i = 0; i < gpn; ++i) ranks[i] = m * gpn + i;
    if (balance == 1 /* WEFT_BALANCE_GREEDY */) {
      std::sort(ranks.begin(), ranks.end(), [load](int a, int b) { return load[a] != load[b] ? load[a] > load[b] : a < b; });
    }
    for (int i = 0; i < gpn; ++i) {
      const int r = balance == 1 ? ranks[(i + m) % gpn] : ranks[i];
      out->member[static_cast<size_t>(m) * gpn + i] = r;
      out->group[r] = i;
    }
  }
}

}  // namespace weft
