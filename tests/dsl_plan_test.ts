import { strict as assert } from "node:assert";
import { WeftError } from "../dsl/errors.ts";
import { experts, fromSpec, Plan } from "../dsl/mod.ts";
import { PLAN_FIELD_NAMES } from "../dsl/plan_fields.ts";

function assertFieldError(fn: () => unknown, field: string): WeftError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof WeftError, `expected a WeftError, got ${error}`);
    assert.equal(error.field, field);
    assert.ok(error.message.includes(field), error.message);
    return error;
  }
  assert.fail(`expected a WeftError on ${field}`);
}

/** The fields every plan has: all declared plan fields but the optional `quantize` and `balance`. */
const PLAN_FIELDS = PLAN_FIELD_NAMES.filter((f) => f !== "quantize" && f !== "balance");

Deno.test("compile resolves every PlanSpec field from the pattern and context", () => {
  const pattern = experts(16).byDevice().topK(4).hidden(1024).dedupe("node").receive("rank-major")
    .combine("sum").dtype("f32");
  const plan = pattern.compile({ world: 4, gpusPerNode: 2 });
  assert.ok(plan instanceof Plan);
  for (const field of PLAN_FIELDS) assert.ok(plan[field] !== undefined, field);
  assert.deepEqual(plan.pattern, pattern.spec);
  assert.deepEqual(
    [plan.world, plan.gpusPerNode, plan.nodes, plan.experts, plan.topK, plan.hidden],
    [4, 2, 2, 16, 4, 1024],
  );
  assert.deepEqual(
    [plan.dtype, plan.dedupe, plan.receive, plan.combine],
    ["f32", "node", "rank-major", "sum"],
  );
  assert.deepEqual(plan.localExperts, Int32Array.of(4, 4, 4, 4));
  assert.deepEqual(plan.slotBase, Int32Array.of(0, 4, 8, 12, 16));
});

Deno.test("gpusPerNode defaults to world, one node", () => {
  const plan = experts(8).byDevice().topK(2).hidden(8).compile({ world: 4 });
  assert.equal(plan.gpusPerNode, 4);
  assert.equal(plan.nodes, 1);
});

Deno.test("experts and hidden may come from the compile context", () => {
  const plan = experts.roundRobin().topK(8).compile({ world: 4, experts: 256, hidden: 7168 });
  assert.equal(plan.experts, 256);
  assert.equal(plan.hidden, 7168);
  assert.equal(plan.pattern.experts, undefined);
  // Both stating the same value is fine.
  assert.equal(
    experts(8).byDevice().topK(1).hidden(8).compile({ world: 2, experts: 8, hidden: 8 }).experts,
    8,
  );
});

Deno.test("a table placement's length gives the expert count", () => {
  const plan = experts.table([1, 1, 0]).topK(2).hidden(8).compile({ world: 2 });
  assert.equal(plan.experts, 3);
  assert.deepEqual(plan.localExperts, Int32Array.of(1, 2));
});

Deno.test("replicas go into the placement tables", () => {
  const plan = experts(8).byDevice().replicate([0], 2).topK(2).hidden(8).compile({ world: 2 });
  assert.deepEqual(plan.localExperts, Int32Array.of(4, 5));
  assert.equal(plan.replicaStart[1] - plan.replicaStart[0], 2);
});

Deno.test("dedupe node compiles on a single node", () => {
  const plan = experts(8).byDevice().topK(2).hidden(8).dedupe("node").compile({ world: 4 });
  assert.equal(plan.nodes, 1);
  assert.equal(plan.dedupe, "node");
});

Deno.test("a plan is frozen and toJSON writes the tables as number arrays", () => {
  const plan = experts(4).roundRobin().topK(2).hidden(8).compile({ world: 2 });
  assert.ok(Object.isFrozen(plan));
  const json = plan.toJSON();
  assert.deepEqual(json.slotBase, [0, 2, 4]);
  assert.deepEqual(json.slotExpert, [0, 2, 1, 3]);
  assert.deepEqual(Object.keys(json).sort(), [...PLAN_FIELDS].sort());
  assert.deepEqual(JSON.parse(JSON.stringify(plan)), JSON.parse(JSON.stringify(json)));
});

Deno.test("Plan.compile takes a spec read from text", () => {
  const spec = experts(8).byDevice().topK(2).spec;
  const plan = Plan.compile(fromSpec(spec).spec, { world: 2, hidden: 16 });
  assert.equal(plan.hidden, 16);
});

Deno.test("plan.layout returns one rank layout per rank (smoke)", () => {
  const plan = experts(4).byDevice().topK(2).hidden(8).compile({ world: 2 });
  const layout = plan.layout([Int32Array.of(0, 3), Int32Array.of(1, 2, 2, -1)]);
  assert.equal(layout.ranks.length, 2);
  assert.equal(layout.ranks[0].tokens, 1);
  assert.equal(layout.ranks[1].tokens, 2);
  // One received row per (token, expert) pair; the -1 slot is no pair.
  const rows = layout.ranks.reduce((sum, r) => sum + r.recvRows, 0);
  assert.equal(rows, 5);
});

// ---- compile-time errors ----

const complete = experts(8).byDevice().topK(2).hidden(8);

Deno.test("compile rejects a world that is not a positive integer", () => {
  for (const world of [0, -2, 1.5, NaN]) {
    assertFieldError(() => complete.compile({ world }), "world");
  }
  assertFieldError(() => complete.compile(undefined as never), "world");
});

Deno.test("compile rejects a gpusPerNode that does not divide world", () => {
  assertFieldError(() => complete.compile({ world: 4, gpusPerNode: 3 }), "gpusPerNode");
  assertFieldError(() => complete.compile({ world: 4, gpusPerNode: 0 }), "gpusPerNode");
  assertFieldError(() => complete.compile({ world: 4, gpusPerNode: 8 }), "gpusPerNode");
});

Deno.test("compile rejects an unknown or conflicting expert count", () => {
  assertFieldError(
    () => experts.byDevice().topK(2).hidden(8).compile({ world: 2 } as never),
    "experts",
  );
  const e = assertFieldError(() => complete.compile({ world: 2, experts: 16 }), "experts");
  assert.match(e.problem, /8.*16/);
  assertFieldError(() => complete.compile({ world: 2, experts: 0 }), "experts");
  assertFieldError(
    () => experts.table([0, 1]).topK(1).hidden(8).compile({ world: 2, experts: 3 }),
    "placement.owners",
  );
});

Deno.test("compile rejects an unknown, conflicting or misaligned hidden size", () => {
  const noHidden = experts(8).byDevice().topK(2);
  assertFieldError(() => noHidden.compile({ world: 2 } as never), "hidden");
  assertFieldError(() => noHidden.compile({ world: 2, hidden: 12 }), "hidden");
  assertFieldError(() => complete.compile({ world: 2, hidden: 16 }), "hidden");
});

Deno.test("compile rejects topK above a context-given expert count", () => {
  assertFieldError(
    () => experts.byDevice().topK(8).hidden(8).compile({ world: 2, experts: 4 }),
    "topK",
  );
});

Deno.test("compile rejects byDevice when experts do not divide among the devices", () => {
  const e = assertFieldError(() => complete.compile({ world: 3 }), "experts");
  assert.match(e.problem, /divisible/);
});

Deno.test("compile rejects a table owner outside the world", () => {
  assertFieldError(
    () => experts.table([0, 1, 2, 3]).topK(1).hidden(8).compile({ world: 2 }),
    "placement.owners[2]",
  );
});

Deno.test("compile rejects replica copies above world and replica ids above a context count", () => {
  assertFieldError(
    () => experts(8).byDevice().replicate([1], 3).topK(2).hidden(8).compile({ world: 2 }),
    "replicas.copies",
  );
  assertFieldError(
    () => experts.byDevice().replicate([9], 2).topK(2).hidden(8).compile({ world: 2, experts: 8 }),
    "replicas.experts[0]",
  );
});

Deno.test("compile rejects unknown context fields", () => {
  assertFieldError(() => complete.compile({ world: 2, nodes: 1 } as never), "nodes");
});
