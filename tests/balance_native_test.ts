// The native hier engine computes its forwarder table on the host
// (native/src/hier_balance.h); every rank, and the Simulator, must get the
// same table as dsl/balance.ts from the same loads. This builds the header
// alone with the host C++ compiler (no CUDA) and compares on random loads,
// ties included.
import assert from "node:assert/strict";
import { hasHostCompiler, runHostHarness } from "./fixtures/host_cxx.ts";
import { forwarderTable } from "../dsl/balance.ts";
import { mulberry32 } from "../lib/io/routing.ts";

// Reads cases "balance world gpn load..." per line; prints each case's member table.
const HARNESS = `#include <cstdio>
#include "hier_balance.h"
int main() {
  int balance, world, gpn;
  while (std::scanf("%d %d %d", &balance, &world, &gpn) == 3) {
    std::vector<long long> load(world);
    for (auto& v : load) std::scanf("%lld", &v);
    weft::ForwarderTable t;
    weft::forwarder_table(balance, load.data(), world, gpn, &t);
    for (int i = 0; i < world; ++i) std::printf(i ? " %d" : "%d", t.member[i]);
    std::printf(" |");
    for (int i = 0; i < world; ++i) std::printf(" %d", t.group[i]);
    std::printf("\\n");
  }
  return 0;
}
`;

Deno.test({
  name: "native hier_balance.h gives dsl/balance.ts's tables (rail and greedy, ties)",
  ignore: !(await hasHostCompiler()),
  fn: async () => {
    const rng = mulberry32(7);
    const cases: { balance: 0 | 1; gpn: number; load: number[] }[] = [];
    for (let i = 0; i < 300; i++) {
      const gpn = 1 + Math.floor(rng() * 8), nodes = 1 + Math.floor(rng() * 8);
      // Small ranges make ties common; some large ones exceed 2^31.
      const top = i % 3 === 0 ? 3 : i % 3 === 1 ? 1000 : 2 ** 40;
      const load = Array.from({ length: gpn * nodes }, () => Math.floor(rng() * top));
      cases.push({ balance: i % 4 === 0 ? 0 : 1, gpn, load });
    }
    const input = cases.map((c) => `${c.balance} ${c.load.length} ${c.gpn} ${c.load.join(" ")}`)
      .join("\n") + "\n";
    const lines = await runHostHarness(HARNESS, input);
    assert.equal(lines.length, cases.length);
    cases.forEach((c, i) => {
      const t = forwarderTable(c.balance === 1 ? "greedy" : "rail", c.load, c.gpn);
      assert.equal(
        lines[i],
        `${Array.from(t.member).join(" ")} | ${Array.from(t.group).join(" ")}`,
        `case ${i}: ${JSON.stringify(c)}`,
      );
    });
  },
});
