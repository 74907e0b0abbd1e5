// The GPU suite's greedy node cases must exercise a table that differs from
// rail in the multi-node worlds with more than one GPU per node, or the
// device run would only re-check the rail path.
import assert from "node:assert/strict";
import { greedyCases } from "./gpu/cases_nodes.ts";
import { caseInputs, planFor } from "./gpu/case_data.ts";
import { crossNodeLoads, greedyTable } from "../dsl/balance.ts";
import { computeLayout } from "../dsl/layout.ts";

Deno.test("greedy GPU cases: the table differs from rail in 2 × 2, 2 × 4 and 4 × 2 worlds", () => {
  for (const [world, gpn] of [[4, 2], [8, 4], [8, 2]]) {
    for (const c of greedyCases()) {
      const plan = planFor(c, world, gpn);
      assert.equal(plan.balance, "greedy");
      const idx = caseInputs(plan, c).map((i) => i.topkIdx);
      const l = computeLayout(plan, idx);
      const t = greedyTable(crossNodeLoads(l.ranks.map((r) => r.destRank), plan.topK, gpn), gpn);
      const moved = Array.from(t.group).some((g, r) => g !== r % gpn);
      assert.ok(moved, `${c.name} in ${world / gpn} × ${gpn}: greedy is the rail table`);
      // The layout follows the table: some source forwards off its rail.
      const off = l.ranks.some((r) =>
        Array.from(r.forwardRank).some((f, d) =>
          Math.floor(d / gpn) !== Math.floor(r.rank / gpn) && f % gpn !== r.rank % gpn
        )
      );
      assert.ok(off, `${c.name} in ${world / gpn} × ${gpn}: every row stays on its rail`);
    }
  }
});
