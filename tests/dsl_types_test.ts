// Type-level tests of the pattern DSL. Each `@ts-expect-error` must mark a
// real type error (the type check fails otherwise); each such chain also
// fails at run time, which the surrounding assert.throws checks, so a caller
// without types gets an error too.
import { strict as assert } from "node:assert";
import {
  type CompletePattern,
  experts,
  fromJSON,
  fromYAML,
  type Pattern,
  type PatternSpec,
  Plan,
} from "../dsl/mod.ts";

type Equals<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true
  : false;

Deno.test("a placement must come before any other step", () => {
  assert.throws(() => {
    // @ts-expect-error topK before a placement
    experts.topK(8);
  }, TypeError);
  assert.throws(() => {
    // @ts-expect-error topK before a placement, count given
    experts(256).topK(8);
  }, TypeError);
  assert.throws(() => {
    // @ts-expect-error replicate before a placement
    experts.replicate([3, 17], 2);
  }, TypeError);
  assert.throws(() => {
    // @ts-expect-error dedupe before a placement
    experts(8).dedupe("none");
  }, TypeError);
});

Deno.test("compile, toYAML and toJSON need topK first", () => {
  const p = experts(8).byDevice().hidden(64);
  // @ts-expect-error compile before topK
  assert.throws(() => p.compile({ world: 2 }), /topK/);
  // @ts-expect-error toYAML before topK
  assert.throws(() => p.toYAML(), /topK/);
  // @ts-expect-error toJSON before topK
  assert.throws(() => p.toJSON(), /topK/);
});

Deno.test("topK, count and replicate can each be called only once", () => {
  const p = experts(64).byDevice();
  // @ts-expect-error topK twice
  assert.throws(() => p.topK(8).topK(4), /topK/);
  // @ts-expect-error count after experts(n)
  assert.throws(() => p.count(64), /experts/);
  // @ts-expect-error count twice
  assert.throws(() => experts.byDevice().count(8).count(8), /experts/);
  // @ts-expect-error count after a table fixed it
  assert.throws(() => experts.table([0, 1]).count(2), /experts/);
  // @ts-expect-error replicate twice
  assert.throws(() => p.replicate([1], 2).replicate([2], 2), /replicas/);
});

Deno.test("option values outside their unions are type errors", () => {
  const p = experts.byDevice();
  // @ts-expect-error "nodes" is not a dedupe mode
  assert.throws(() => p.dedupe("nodes"), /dedupe/);
  // @ts-expect-error fp8 is not a dtype
  assert.throws(() => p.dtype("fp8"), /dtype/);
  // @ts-expect-error not a receive order
  assert.throws(() => p.receive("device-major"), /receive/);
  // @ts-expect-error not a combine op
  assert.throws(() => p.combine("mean"), /combine/);
  // @ts-expect-error hidden is a number
  assert.throws(() => p.hidden("7168"), /hidden/);
});

Deno.test("compile requires experts and hidden in the context when the pattern lacks them", () => {
  const noCount = experts.byDevice().topK(2).hidden(64);
  // @ts-expect-error experts missing from both pattern and context
  assert.throws(() => noCount.compile({ world: 2 }), /experts/);
  assert.ok(noCount.compile({ world: 2, experts: 4 }) instanceof Plan);

  const noHidden = experts(4).byDevice().topK(2);
  // @ts-expect-error hidden missing from both pattern and context
  assert.throws(() => noHidden.compile({ world: 2 }), /hidden/);
  assert.ok(noHidden.compile({ world: 2, hidden: 64 }) instanceof Plan);

  // @ts-expect-error worldSize is not a context field
  assert.throws(() => noHidden.compile({ world: 2, hidden: 64, worldSize: 2 }), /worldSize/);
});

Deno.test("valid chains type-check in any option order", () => {
  const a = experts.byDevice().topK(8);
  const c = experts.roundRobin().dedupe("node").hidden(7168).count(64).replicate([1], 2).topK(8);
  const d = experts.table([0, 1, 1, 0]).receive("rank-major").topK(2).combine("sum").dtype("f32");
  const plan: Plan = c.compile({ world: 4, gpusPerNode: 2 });
  assert.equal(plan.nodes, 2);
  assert.equal(d.compile({ world: 2, hidden: 8 }).experts, 4);
  assert.equal(a.spec.topK, 8);
});

Deno.test("spec is PatternSpec once complete and has an optional topK before", () => {
  const draft = experts.byDevice();
  const done = draft.topK(8);
  const k: number = done.spec.topK;
  assert.equal(k, 8);
  const isSpec: Equals<typeof done.spec, PatternSpec> = true;
  assert.ok(isSpec);
  // @ts-expect-error topK may be undefined before .topK(k)
  const early: number = draft.spec.topK;
  assert.equal(early, undefined);
});

Deno.test("specs and plans are readonly in their types and frozen at run time", () => {
  const p = experts(8).byDevice().topK(2).hidden(64);
  assert.throws(() => {
    // @ts-expect-error spec fields are readonly
    p.spec.topK = 3;
  }, TypeError);
  const plan = p.compile({ world: 2 });
  assert.throws(() => {
    // @ts-expect-error plan fields are readonly
    plan.world = 4;
  }, TypeError);
});

Deno.test("every complete pattern, built or read, is a CompletePattern", () => {
  const built = experts(8).byDevice().replicate([1], 2).topK(2).hidden(64);
  const read: CompletePattern = fromYAML(built.toYAML());
  const all: CompletePattern[] = [built, read, fromJSON(built.toJSON())];
  const any: Pattern[] = all;
  assert.equal(any.length, 3);
  // A pattern read from text may already have replicas, so its type offers no .replicate.
  // @ts-expect-error replicate on a pattern of unknown replication
  assert.throws(() => read.replicate([2], 2), /replicas/);
  // Its count may be unknown, but compile accepts the context's.
  assert.equal(read.compile({ world: 2 }).experts, 8);
});
