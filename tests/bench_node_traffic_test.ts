import assert from "node:assert/strict";
import { experts } from "../dsl/mod.ts";
import { classTraffic, nodeTraffic } from "../bench/node_traffic.ts";
import { computeLayout } from "../dsl/layout.ts";
import { SCENARIOS } from "../bench/scenarios.ts";

const plan = experts(64).byDevice().topK(8).dtype("bf16").hidden(256).dedupe("node")
  .compile({ world: 8, gpusPerNode: 2 });

/** Counted independently of the layout compiler: (token, remote node with ≥ 1 of its experts). */
function networkRowsNode(topkIdx: readonly Int32Array[]): number {
  const perRank = plan.experts / plan.world;
  let rows = 0;
  topkIdx.forEach((idx, s) => {
    const home = Math.floor(s / plan.gpusPerNode);
    for (let t = 0; t < idx.length / plan.topK; t++) {
      const nodes = new Set<number>();
      for (let k = 0; k < plan.topK; k++) {
        const e = idx[t * plan.topK + k];
        if (e >= 0) nodes.add(Math.floor(Math.floor(e / perRank) / plan.gpusPerNode));
      }
      nodes.delete(home);
      rows += nodes.size;
    }
  });
  return rows;
}

Deno.test("node dedupe sends one row per (token, remote node) over the network", () => {
  for (const scenario of SCENARIOS) {
    const routing = scenario.route(plan, 96, 3).map((r) => r.topkIdx);
    const t = nodeTraffic(plan, routing);
    assert.equal(t.node.net.rows, networkRowsNode(routing), scenario.name);
    assert.equal(t.node.net.bytes, t.node.net.rows * plan.hidden * 2, scenario.name);
    assert.ok(t.node.net.rows <= t.device.net.rows, scenario.name);
    // Every row that lands on another rank crosses exactly one link per hop:
    // device-dedupe totals equal the layout's own totals.
    const all = computeLayout({ ...plan, dedupe: "device" } as typeof plan, routing);
    const total = all.links.reduce((a, l) => a + l.rows, 0);
    assert.equal(t.device.intra.rows + t.device.net.rows, total, scenario.name);
  }
});

Deno.test("one node: nothing crosses the network", () => {
  const one = experts(16).byDevice().topK(4).dtype("f32").hidden(8).compile({ world: 4 });
  const routing = SCENARIOS[0].route(one, 32, 1).map((r) => r.topkIdx);
  const t = classTraffic(computeLayout(one, routing));
  assert.equal(t.net.rows, 0);
  assert.equal(t.maxRankNetBytes, 0);
  assert.ok(t.intra.rows > 0);
});
