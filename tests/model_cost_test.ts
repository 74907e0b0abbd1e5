import assert from "node:assert/strict";
import { experts } from "../dsl/mod.ts";
import { WeftError } from "../dsl/errors.ts";
import { forwarderLoads, forwarderOf, greedyTable, railTable } from "../dsl/balance.ts";
import { uniform, zipf } from "../lib/io/routing.ts";
import { rankTraffic } from "../lib/model/rank_traffic.ts";
import { predict } from "../lib/model/cost.ts";
import { calibrate } from "../lib/model/calibration.ts";
import { fuscoTable } from "../lib/model/fusco.ts";
import { TOPOLOGIES, topologyFrom } from "../lib/model/topology.ts";

const small = (nodes: number, gpn: number) => ({
  ...TOPOLOGIES["h100-8x8-roce"],
  nodes,
  gpusPerNode: gpn,
});

Deno.test("cost model: every measured row within 15%", () => {
  const rows = calibrate();
  assert.ok(rows.length >= 20);
  for (const r of rows) {
    assert.ok(
      Math.abs(r.errorPct) <= 15,
      `${r.topology} ${r.tokens} ${r.scenario}: predicted ${r.predicted}, measured ${r.ms}`,
    );
  }
  // DESIGN.md's bytes: 637.8 MB per GPU and direction at 16384 uniform on 4 GPUs.
  const u = rows.find((r) =>
    r.topology === "h200x4" && r.tokens === 16384 && !r.e4m3 &&
    r.scenario === "uniform"
  )!;
  assert.equal(u.remoteMB.toFixed(1), "637.8");
});

Deno.test("rank traffic: per-rank counts equal the layout's links", () => {
  for (const dedupe of ["none", "device", "node"] as const) {
    const plan = experts(32).byDevice().topK(4).hidden(64).dedupe(dedupe).compile({
      world: 8,
      gpusPerNode: 4,
    });
    const layout = plan.layout(
      zipf(plan, { tokens: [50, 0, 7, 31, 12, 40, 3, 19] }).map((r) => r.topkIdx),
    );
    const t = rankTraffic(layout);
    const out = new Array(8).fill(0), inn = new Array(8).fill(0);
    for (const l of layout.links) {
      out[l.src] += l.rows + l.forwardedRows;
      inn[l.dst] += l.rows + l.forwardedRows;
    }
    for (let r = 0; r < 8; r++) {
      assert.equal(t.nvOut[r] + t.nicOut[r], out[r], `${dedupe} rank ${r} out`);
      assert.equal(t.nvIn[r] + t.nicIn[r], inn[r], `${dedupe} rank ${r} in`);
      assert.equal(t.recvRows[r], layout.ranks[r].recvRows);
    }
    if (dedupe !== "node") assert.equal(t.fanOut.reduce((a, b) => a + b, 0), 0);
  }
});

Deno.test("cost model: dedupe node cuts NIC bytes; a topology that does not fit throws", () => {
  const topo = small(4, 2);
  const layoutOf = (dedupe: "device" | "node") => {
    const plan = experts(64).byDevice().topK(8).hidden(256).dedupe(dedupe).compile({
      world: 8,
      gpusPerNode: 2,
    });
    return plan.layout(uniform(plan, { tokens: 256 }).map((r) => r.topkIdx));
  };
  const dev = predict(layoutOf("device"), topo), node = predict(layoutOf("node"), topo);
  assert.ok(node.bytes.nicTotal < dev.bytes.nicTotal);
  assert.ok(node.dispatch.fanout > 0 && node.dispatch.transfer > 0);
  const sumStages = (p: typeof node) =>
    p.dispatch.quantize + p.dispatch.front + p.dispatch.transfer + p.dispatch.fanout +
    p.combine.partials + p.combine.transfer + p.combine.home + p.barriers;
  assert.ok(Math.abs(sumStages(node) - node.totalMs) < 1e-9);
  assert.throws(() => predict(layoutOf("node"), TOPOLOGIES.h200x4), WeftError);
});

Deno.test("topology: presets and flags", () => {
  assert.equal(topologyFrom("h200x4").nvlinkWriteGBs, 355);
  assert.equal(topologyFrom("h100-8x8-roce", { nodes: "2" }).nodes, 2);
  assert.throws(() => topologyFrom("nope"), WeftError);
  assert.throws(() => topologyFrom("h200x4", { nodes: "1.5" }), WeftError);
  assert.throws(() => topologyFrom("h200x4", { nodes: "2" }), WeftError); // no NICs
});

Deno.test("balance: rail is f(s,m) = m·gpn + local(s); greedy is Algorithm 1", () => {
  const rail = railTable(12, 4);
  for (let s = 0; s < 12; s++) {
    for (let m = 0; m < 3; m++) assert.equal(forwarderOf(rail, s, m), m * 4 + (s % 4));
  }
  // 3 nodes × 3 GPUs. Loads: node 0 [5, 9, 1], node 1 [2, 2, 7], node 2 [4, 8, 6].
  // Sorted descending (ties: lower rank): node 0 → 1,0,2; node 1 → 5,3,4; node 2 → 7,8,6.
  // Rotated left by the node index: node 0 → 1,0,2; node 1 → 3,4,5; node 2 → 6,7,8.
  const t = greedyTable([5, 9, 1, 2, 2, 7, 4, 8, 6], 3);
  assert.equal(Array.from(t.member).join(), "1,0,2,3,4,5,6,7,8");
  // Groups: {1,3,6}, {0,4,7}, {2,5,8}: loads 9+2+4 = 15, 5+2+8 = 15, 1+7+6 = 14
  // (rail's groups {0,3,6}, {1,4,7}, {2,5,8} carry 11, 19, 14).
  assert.equal(forwarderOf(t, 1, 2), 6);
  assert.equal(forwarderOf(t, 8, 0), 2);
  assert.throws(() => greedyTable([1, -1], 1), WeftError);
});

Deno.test("balance: every table is one rank per node per group; loads are conserved", () => {
  for (let seed = 1; seed <= 20; seed++) {
    let x = seed;
    const rnd = () => (x = (x * 1103515245 + 12345) % 2147483648) / 2147483648;
    const gpn = 1 + (seed % 4), nodes = 2 + (seed % 3), W = gpn * nodes;
    const load = Array.from({ length: W }, () => Math.floor(rnd() * 100));
    const t = greedyTable(load, gpn);
    for (let m = 0; m < nodes; m++) {
      const ranks = Array.from(t.member.subarray(m * gpn, (m + 1) * gpn)).sort((a, b) => a - b);
      assert.deepEqual(ranks, Array.from({ length: gpn }, (_, i) => m * gpn + i));
    }
    const nodeRows = Array.from(
      { length: W * nodes },
      (
        _,
        i,
      ) => (Math.floor(Math.floor(i / nodes) / gpn) === i % nodes ? 0 : Math.floor(rnd() * 50)),
    );
    const sum = (a: Float64Array) => a.reduce((p, q) => p + q, 0);
    assert.equal(
      sum(forwarderLoads(nodeRows, t)),
      sum(forwarderLoads(nodeRows, railTable(W, gpn))),
    );
  }
});

Deno.test("FUSCO table: the model runs their scenarios on a small testbed", () => {
  const rows = fuscoTable((c) => c.tokens === 4096, small(2, 4));
  assert.equal(rows.length, 3);
  for (const r of rows) {
    assert.ok(r.nodeRail > 0 && r.none > 0 && r.impliedNicGBs > 0);
    assert.ok(r.nodeRail <= r.none, `${r.scenario}: node ${r.nodeRail} vs none ${r.none}`);
  }
});
