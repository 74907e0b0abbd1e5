// `balance`: the pattern/plan setting (step, validation, YAML/JSON, plan
// JSON, the native plan descriptor) and what it does to a layout.
import assert from "node:assert/strict";
import { experts, fromJSON, fromYAML, Plan } from "../dsl/mod.ts";
import { computeLayout, layoutFromJSON, layoutToJSON } from "../dsl/layout.ts";
import {
  crossNodeLoads,
  forwarderLoads,
  forwarderOf,
  forwarderTable,
  greedyTable,
  nodeRowLoads,
  railTable,
} from "../dsl/balance.ts";
import { planFromJSON, planToJSON } from "../dsl/plan_fields.ts";
import { planDescFields } from "../lib/gpu/plan_desc.ts";
import { weftError } from "./fixtures.ts";

const base = () => experts(16).byDevice().topK(2).hidden(64).dedupe("node");

Deno.test("balance step: greedy is kept, rail is the default and left out, the last call wins", () => {
  assert.equal(base().spec.balance, undefined);
  assert.equal(base().balance("greedy").spec.balance, "greedy");
  assert.equal(base().balance("greedy").balance("rail").spec.balance, undefined);
  assert.deepStrictEqual(base().balance("rail").spec, base().spec);
  const yaml = base().balance("greedy").toYAML();
  assert.match(yaml, /dtype: bf16\nbalance: greedy\nhidden: 64\n/);
  assert.deepStrictEqual(fromYAML(yaml).spec, base().balance("greedy").spec);
  assert.deepStrictEqual(fromJSON(JSON.stringify(base().balance("greedy"))).spec.balance, "greedy");
  // Written explicitly, rail reads back as the default.
  assert.equal(
    fromYAML("placement: { kind: byDevice }\ntopK: 2\nbalance: rail\n").spec.balance,
    undefined,
  );
});

Deno.test("balance: a bad value is a WeftError naming balance and the values to use", () => {
  const e = weftError(() => base().balance("fusco" as "greedy"), "balance");
  assert.match(e.message, /"rail", "greedy"/);
  weftError(() => fromJSON({ placement: { kind: "byDevice" }, topK: 2, balance: 1 }), "balance");
  weftError(
    () =>
      Plan.compile({ ...base().spec, balance: "best" as "greedy" }, { world: 4, gpusPerNode: 2 }),
    "balance",
  );
  weftError(() => greedyTable([1, NaN], 1), "load", 1);
  weftError(() => railTable(6, 4), "gpusPerNode");
});

Deno.test("balance: the plan carries it through JSON, the layout's text and the native descriptor", () => {
  const plan = base().balance("greedy").compile({ world: 4, gpusPerNode: 2 });
  assert.equal(plan.balance, "greedy");
  assert.equal(plan.toJSON().balance, "greedy");
  assert.equal(planFromJSON(planToJSON(plan) as Record<string, unknown>, "plan").balance, "greedy");
  assert.equal(planDescFields(plan, 0).balance, 1);
  const rail = base().compile({ world: 4, gpusPerNode: 2 });
  assert.equal("balance" in rail, false);
  assert.equal(planDescFields(rail, 0).balance, 0);
  const l = plan.layout([
    Int32Array.of(8, 12),
    Int32Array.of(),
    Int32Array.of(0, 4),
    Int32Array.of(),
  ]);
  const back = layoutFromJSON(JSON.parse(JSON.stringify(layoutToJSON(l))));
  assert.equal(back.plan.balance, "greedy");
  assert.deepStrictEqual(back.ranks, l.ranks);
});

Deno.test("balance is inert without forwarders: dedupe device, or one node", () => {
  const idx = [
    Int32Array.of(8, 12, 1, 9),
    Int32Array.of(4, 13),
    Int32Array.of(0, 2),
    Int32Array.of(),
  ];
  const cases: [Plan, Plan][] = [
    [
      base().dedupe("device").compile({ world: 4, gpusPerNode: 2 }),
      base().dedupe("device").balance("greedy").compile({ world: 4, gpusPerNode: 2 }),
    ],
    [base().compile({ world: 4 }), base().balance("greedy").compile({ world: 4 })],
  ];
  for (const [a, b] of cases) {
    const la = computeLayout(a, idx), lb = computeLayout(b, idx);
    assert.deepStrictEqual(lb.ranks, la.ranks);
    assert.deepStrictEqual(lb.links, la.links);
  }
});

Deno.test("Algorithm 1 worked example: 3 nodes × 4 GPUs, ties to the lower rank", () => {
  // Loads (rows each GPU sends to other nodes):
  //   node 0: r0 4, r1 10, r2 10, r3 1 → sorted 1, 2, 0, 3 (r1 before r2: tie, lower rank)
  //   node 1: r4 7, r5 0, r6 3, r7 9   → sorted 7, 4, 6, 5; rotated left by 1 → 4, 6, 5, 7
  //   node 2: r8 2, r9 2, r10 8, r11 5 → sorted 10, 11, 8, 9; rotated left by 2 → 8, 9, 10, 11
  const load = [4, 10, 10, 1, 7, 0, 3, 9, 2, 2, 8, 5];
  const t = greedyTable(load, 4);
  assert.deepEqual(Array.from(t.member), [1, 2, 0, 3, 4, 6, 5, 7, 8, 9, 10, 11]);
  // Groups {1,4,8} 19, {2,6,9} 15, {0,5,10} 12, {3,7,11} 15: max 19 against rail's
  // {0,4,8} 13, {1,5,9} 12, {2,6,10} 21, {3,7,11} 15: max 21.
  const groupLoad = (tb: typeof t) =>
    Array.from(
      { length: 4 },
      (_, g) => [0, 1, 2].reduce((a, m) => a + load[tb.member[m * 4 + g]], 0),
    );
  assert.deepEqual(groupLoad(t), [19, 15, 12, 15]);
  assert.deepEqual(groupLoad(railTable(12, 4)), [13, 12, 21, 15]);
  assert.equal(forwarderOf(t, 1, 1), 4);
  assert.equal(forwarderOf(t, 7, 2), 11);
  assert.equal(forwarderOf(t, 10, 0), 0);
  // Each rank's group, and each node holds every group once.
  assert.deepEqual(Array.from(t.group), [2, 0, 1, 3, 0, 2, 1, 3, 0, 1, 2, 3]);
});

Deno.test("loads: from routing (crossNodeLoads) and from the exchanged node rows agree", () => {
  // 2 nodes × 2 GPUs, K = 2, byDevice 16 experts: 4 per rank.
  const plan = base().compile({ world: 4, gpusPerNode: 2 });
  const idx = [
    Int32Array.of(8, 12, 1, 9, 0, 1),
    Int32Array.of(4, 13),
    Int32Array.of(0, 2),
    Int32Array.of(),
  ];
  const l = plan.layout(idx);
  const destRank = l.ranks.map((r) => r.destRank);
  const L = crossNodeLoads(destRank, 2, 2);
  assert.deepEqual(Array.from(L), [2, 1, 1, 0]);
  const nodeRows = [0, 2, 0, 1, 1, 0, 0, 0];
  assert.deepEqual(Array.from(nodeRowLoads(nodeRows, 4, 2)), Array.from(L));
  const g = forwarderTable("greedy", L, 2);
  assert.deepEqual(Array.from(g.member), Array.from(greedyTable(L, 2).member));
  assert.deepEqual(Array.from(forwarderTable(undefined, L, 2).member), [0, 1, 2, 3]);
  // Total inbound is the same under both tables.
  const sum = (a: Float64Array) => a.reduce((x, y) => x + y, 0);
  assert.equal(sum(forwarderLoads(nodeRows, g)), sum(forwarderLoads(nodeRows, railTable(4, 2))));
});
