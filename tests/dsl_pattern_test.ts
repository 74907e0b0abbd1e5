import { strict as assert } from "node:assert";
import { WeftError } from "../dsl/errors.ts";
import { experts, fromSpec, PATTERN_DEFAULTS } from "../dsl/mod.ts";

/** Asserts that `fn` throws a WeftError whose field is `field` and whose message names it. */
function assertFieldError(fn: () => unknown, field: string): WeftError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof WeftError, `expected a WeftError, got ${error}`);
    assert.equal(error.field, field);
    assert.ok(error.message.includes(field), error.message);
    assert.ok(error.fix.length > 0);
    return error;
  }
  assert.fail(`expected a WeftError on ${field}`);
}

Deno.test("byDevice().topK(8) is a complete pattern with the documented defaults", () => {
  const p = experts.byDevice().topK(8);
  assert.deepEqual(p.spec, {
    placement: { kind: "byDevice" },
    topK: 8,
    dedupe: "device",
    receive: "expert-major",
    combine: "weighted",
    dtype: "bf16",
  });
  assert.deepEqual(PATTERN_DEFAULTS, {
    dedupe: "device",
    receive: "expert-major",
    combine: "weighted",
    dtype: "bf16",
  });
});

Deno.test("each placement root sets its placement kind", () => {
  assert.deepEqual(experts.byDevice().spec.placement, { kind: "byDevice" });
  assert.deepEqual(experts.roundRobin().spec.placement, { kind: "roundRobin" });
  assert.deepEqual(experts.table([1, 0, 0]).spec.placement, { kind: "table", owners: [1, 0, 0] });
  assert.deepEqual(experts(3).table([1, 0, 0]).spec.experts, 3);
});

Deno.test("the expert count comes from experts(n), .count(n), or stays unset", () => {
  assert.equal(experts(256).byDevice().spec.experts, 256);
  assert.equal(experts(256).roundRobin().spec.experts, 256);
  assert.equal(experts.byDevice().count(128).spec.experts, 128);
  assert.equal(experts.byDevice().spec.experts, undefined);
  assert.ok(!("experts" in experts.byDevice().spec));
  // A table alone leaves the count implied by its length.
  assert.equal(experts.table([0, 1]).spec.experts, undefined);
});

Deno.test("each option step sets its field and nothing else", () => {
  const base = experts(16).byDevice().topK(4);
  const cases = [
    [base.dedupe("none"), "dedupe", "none"],
    [base.dedupe("node"), "dedupe", "node"],
    [base.dedupe("device"), "dedupe", "device"],
    [base.receive("rank-major"), "receive", "rank-major"],
    [base.combine("sum"), "combine", "sum"],
    [base.dtype("f16"), "dtype", "f16"],
    [base.dtype("f32"), "dtype", "f32"],
    [base.hidden(7168), "hidden", 7168],
  ] as const;
  for (const [pattern, field, value] of cases) {
    assert.deepEqual(pattern.spec, { ...base.spec, [field]: value });
  }
});

Deno.test("the last call of an option step wins", () => {
  const p = experts.byDevice().dtype("f32").dtype("f16").hidden(8).hidden(16);
  assert.equal(p.spec.dtype, "f16");
  assert.equal(p.spec.hidden, 16);
});

Deno.test("replicate records the hot experts and copies as given", () => {
  const p = experts(64).byDevice().replicate([17, 3], 2).topK(8);
  assert.deepEqual(p.spec.replicas, { experts: [17, 3], copies: 2 });
});

Deno.test("steps may come in any order after the placement", () => {
  const a = experts.byDevice().count(64).hidden(64).replicate([1], 3).dedupe("none").topK(2);
  const b = experts.byDevice().topK(2).dedupe("none").replicate([1], 3).hidden(64).count(64);
  assert.deepEqual(a.spec, b.spec);
  assert.equal(a.toYAML(), b.toYAML());
});

Deno.test("every step returns a new pattern and leaves the old one unchanged", () => {
  const p = experts(16).byDevice();
  const before = JSON.stringify(p.spec);
  const steps = [
    p.topK(2),
    p.dedupe("none"),
    p.receive("rank-major"),
    p.combine("sum"),
    p.dtype("f32"),
    p.hidden(64),
    p.replicate([1], 2),
    experts.byDevice().count(8),
  ];
  for (const next of steps) assert.notEqual(next, p);
  assert.equal(JSON.stringify(p.spec), before);
});

Deno.test("patterns and their specs are deeply frozen", () => {
  const owners = [0, 1, 1, 0];
  const hot = [2];
  const p = experts.table(owners).replicate(hot, 2).topK(2);
  assert.ok(Object.isFrozen(p));
  assert.ok(Object.isFrozen(p.spec));
  assert.ok(Object.isFrozen(p.spec.placement));
  assert.ok(p.spec.placement.kind === "table" && Object.isFrozen(p.spec.placement.owners));
  assert.ok(Object.isFrozen(p.spec.replicas));
  assert.ok(Object.isFrozen(p.spec.replicas?.experts));
  assert.ok(Object.isFrozen(experts));
  // The pattern copied the caller's arrays: mutating them later changes nothing.
  owners[0] = 7;
  hot[0] = 3;
  assert.ok(p.spec.placement.kind === "table" && p.spec.placement.owners[0] === 0);
  assert.equal(p.spec.replicas?.experts[0], 2);
});

Deno.test("toJSON returns the spec, so JSON.stringify(pattern) is the spec's JSON", () => {
  const p = experts(8).roundRobin().topK(2).hidden(64);
  assert.equal(p.toJSON(), p.spec);
  assert.equal(JSON.stringify(p), JSON.stringify(p.spec));
});

Deno.test("fromSpec accepts a complete spec and rejects unknown fields", () => {
  const p = experts(8).byDevice().topK(2);
  assert.deepEqual(fromSpec(p.spec).spec, p.spec);
  assertFieldError(() => fromSpec({ ...p.spec, topk: 2 } as never), "topk");
});

// ---- impossible values: each is a WeftError naming the field ----

Deno.test("experts(n) rejects a count that is not a positive integer", () => {
  for (const n of [0, -4, 2.5, NaN, Infinity]) assertFieldError(() => experts(n), "experts");
  assertFieldError(() => experts.byDevice().count(0), "experts");
  assertFieldError(() => experts.byDevice().count(1.5), "experts");
});

Deno.test("topK rejects k < 1, a non-integer k and k > experts", () => {
  assertFieldError(() => experts.byDevice().topK(0), "topK");
  assertFieldError(() => experts.byDevice().topK(-1), "topK");
  assertFieldError(() => experts.byDevice().topK(2.5), "topK");
  const e = assertFieldError(() => experts(4).byDevice().topK(5), "topK");
  assert.match(e.problem, /4 experts/);
  // The count arriving after topK is checked against it too.
  assertFieldError(() => experts.byDevice().topK(8).count(4), "topK");
  // A table's length is the count.
  assertFieldError(() => experts.table([0, 1]).topK(3), "topK");
});

Deno.test("hidden must be a positive integer multiple of 8 elements", () => {
  assertFieldError(() => experts.byDevice().hidden(0), "hidden");
  assertFieldError(() => experts.byDevice().hidden(64.5), "hidden");
  const e = assertFieldError(() => experts.byDevice().hidden(7170), "hidden");
  assert.match(e.problem, /multiple of 8/);
  assert.match(e.fix, /7176/);
  assert.equal(experts.byDevice().hidden(8).spec.hidden, 8);
});

Deno.test("table rejects an empty table, bad owners and a length that disagrees with the count", () => {
  assertFieldError(() => experts.table([]), "placement.owners");
  assertFieldError(() => experts.table([0, -1]), "placement.owners[1]");
  assertFieldError(() => experts.table([0, 1.5]), "placement.owners[1]");
  assertFieldError(() => experts.table("0,1" as never), "placement.owners");
  const e = assertFieldError(() => experts(3).table([0, 1]), "placement.owners");
  assert.match(e.problem, /2 entries/);
  // A rank that owns no experts is fine (here rank 1 of 3).
  assert.deepEqual(
    experts.table([0, 0, 2, 2]).topK(1).compile({ world: 3, hidden: 8 }).localExperts,
    Int32Array.of(2, 0, 2),
  );
});

Deno.test("replicate rejects bad, out-of-range and duplicated ids and copies < 2", () => {
  const p = experts(8).byDevice();
  assertFieldError(() => p.replicate([], 2), "replicas.experts");
  assertFieldError(() => p.replicate([8], 2), "replicas.experts[0]");
  assertFieldError(() => p.replicate([1, -1], 2), "replicas.experts[1]");
  assertFieldError(() => p.replicate([1.5], 2), "replicas.experts[0]");
  const dup = assertFieldError(() => p.replicate([3, 5, 3], 2), "replicas.experts[2]");
  assert.match(dup.problem, /listed twice/);
  assertFieldError(() => p.replicate([3], 1), "replicas.copies");
  assertFieldError(() => p.replicate([3], 2.5), "replicas.copies");
  // Ids are checked against a count that arrives later.
  assertFieldError(() => experts.byDevice().replicate([9], 2).count(8), "replicas.experts[0]");
});

Deno.test("option steps reject values outside their sets at run time", () => {
  const p = experts.byDevice();
  assertFieldError(() => p.dedupe("nodes" as never), "dedupe");
  assertFieldError(() => p.receive("token-major" as never), "receive");
  assertFieldError(() => p.combine("max" as never), "combine");
  assertFieldError(() => p.dtype("fp8" as never), "dtype");
});
