// Hostile and careless inputs to the pattern layer: every one must end in a
// WeftError that names the field (and, for text, the line and column), never
// in a TypeError, a RangeError, an out-of-memory abort or a silent rewrite.
import assert from "node:assert/strict";
import { WeftError } from "../dsl/errors.ts";
import { experts, fromJSON, fromSpec, fromYAML, Plan } from "../dsl/mod.ts";
import { compilePlacement } from "../dsl/placement.ts";
import {
  LIMITS,
  MAX_EXPERTS,
  MAX_HIDDEN,
  MAX_NESTING,
  MAX_TOPK,
  MAX_WORLD,
} from "../dsl/limits.ts";
import { show } from "../dsl/show.ts";
import type { PatternSpec } from "../dsl/types.ts";

function rejected(fn: () => unknown, field: string): WeftError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof WeftError, `expected a WeftError, got ${error}`);
    assert.equal(error.field, field, error.message);
    return error;
  }
  assert.fail(`expected a WeftError on ${field}`);
}

const base: PatternSpec = {
  placement: { kind: "byDevice" },
  topK: 2,
  dedupe: "device",
  receive: "expert-major",
  combine: "weighted",
  dtype: "bf16",
};

Deno.test("messages show NaN, ±Infinity and BigInts as given, not as null or a plain number", () => {
  assert.deepStrictEqual(
    [show(NaN), show(Infinity), show(-Infinity), show(8n), show(-0), show([NaN, 1n])],
    ["NaN", "Infinity", "-Infinity", "8n", "-0", "[NaN,1n]"],
  );
  for (const [value, text] of [[NaN, "NaN"], [Infinity, "Infinity"], [-Infinity, "-Infinity"]]) {
    const e = rejected(() => experts(8).byDevice().topK(value as number), "topK");
    assert.match(e.message, new RegExp(`got ${text}\\b`));
    assert.ok(!e.message.includes("got null"), e.message);
  }
  assert.match(
    rejected(() => experts(8).byDevice().hidden(8n as unknown as number), "hidden").message,
    /got 8n/,
  );
  assert.match(rejected(() => fromJSON({ ...base, experts: 8n }), "experts").message, /got 8n/);
  assert.match(
    rejected(() => experts(4).byDevice().topK(1).hidden(8).compile({ world: NaN }), "world")
      .message,
    /got NaN/,
  );
  assert.match(
    rejected(
      () =>
        compilePlacement({
          placement: { kind: "byDevice" },
          experts: 4,
          world: 2n as unknown as number,
          gpusPerNode: 1,
        }),
      "world",
    ).message,
    /got 2n/,
  );
});

Deno.test("optional fields explicitly undefined read as absent, as Plan.compile reads them", () => {
  const spec = {
    ...base,
    experts: undefined,
    hidden: undefined,
    quantize: undefined,
    replicas: undefined,
  };
  const a = fromSpec(spec);
  const b = fromJSON(spec);
  assert.deepStrictEqual(a.spec, fromSpec(base).spec);
  assert.deepStrictEqual(b.spec, a.spec);
  assert.ok(!("experts" in a.spec) && !("quantize" in a.spec));
  const ctx = { world: 2, experts: 4, hidden: 8 };
  assert.deepStrictEqual(a.compile(ctx).toJSON(), Plan.compile(spec, ctx).toJSON());
  const table = fromJSON({ ...base, placement: { kind: "table", owners: [0, 1] } });
  assert.equal(table.spec.placement.kind, "table");
});

Deno.test("a required field explicitly undefined is rejected at read time, naming it", () => {
  rejected(() => fromJSON({ ...base, topK: undefined }), "topK");
  rejected(() => fromSpec({ ...base, topK: undefined as unknown as number }), "topK");
  rejected(() => fromJSON({ ...base, placement: undefined }), "placement");
  rejected(
    () => fromJSON({ ...base, placement: { kind: "table", owners: undefined } }),
    "placement.owners",
  );
  rejected(
    () => fromJSON({ ...base, replicas: { experts: [1], copies: undefined } }),
    "replicas.copies",
  );
});

Deno.test("non-mapping values of any kind are WeftErrors, not TypeErrors", () => {
  for (const value of [[1n, Object.create(null)], 1n, null, Symbol("x"), () => 1, [NaN]]) {
    rejected(() => fromJSON(value), "pattern");
  }
  rejected(() => fromJSON({ ...base, placement: Object.create(null) }), "placement.kind");
});

Deno.test("malformed JSON text names the line and the column", () => {
  const cases: [string, number, number][] = [
    ['{\n  "placement": {"kind": "byDevice"},\n  "topK": tru\n}', 3, 11],
    ['\uFEFF{"placement": {"kind": "byDevice"}, "topK": 2}', 1, 1],
    ["", 1, 1],
    ["   \n  ", 2, 3],
    ['{"topK": 2,}', 1, 12],
    ['{"topK": 2} x', 1, 13],
    ['{"topK": "a\u0001"}', 1, 10],
  ];
  for (const [text, line, column] of cases) {
    const e = rejected(() => fromJSON(text), "json");
    assert.deepStrictEqual(
      [e.line, e.column],
      [line, column],
      `${JSON.stringify(text)}: ${e.message}`,
    );
    assert.match(e.message, new RegExp(`line ${line}, column ${column}`));
  }
});

Deno.test("limits: values past them are WeftErrors naming the field, the limit and the fix", () => {
  assert.deepStrictEqual(LIMITS, {
    experts: MAX_EXPERTS,
    world: MAX_WORLD,
    hidden: MAX_HIDDEN,
    topK: MAX_TOPK,
    nesting: MAX_NESTING,
  });
  const cases: [() => unknown, string, number][] = [
    [() => experts(300_000_000).byDevice(), "experts", MAX_EXPERTS],
    [() => experts(2 ** 40).roundRobin(), "experts", MAX_EXPERTS],
    [
      () => experts.roundRobin().topK(2).hidden(8).compile({ world: 2, experts: 2 ** 40 }),
      "experts",
      MAX_EXPERTS,
    ],
    [
      () => experts(8).roundRobin().topK(2).hidden(8).compile({ world: 2 ** 32 }),
      "world",
      MAX_WORLD,
    ],
    [
      () => experts(8).roundRobin().topK(2).hidden(8).compile({ world: 8, gpusPerNode: 2 ** 32 }),
      "gpusPerNode",
      MAX_WORLD,
    ],
    [() => experts(64).byDevice().topK(MAX_TOPK + 1), "topK", MAX_TOPK],
    [() => experts(8).byDevice().hidden(MAX_HIDDEN + 8), "hidden", MAX_HIDDEN],
    [() => fromJSON({ ...base, experts: MAX_EXPERTS + 1 }), "experts", MAX_EXPERTS],
    [
      () =>
        compilePlacement({
          placement: { kind: "roundRobin" },
          experts: 2 ** 40,
          world: 2,
          gpusPerNode: 2,
        }),
      "experts",
      MAX_EXPERTS,
    ],
    [
      () =>
        compilePlacement({
          placement: { kind: "roundRobin" },
          experts: 4,
          world: 2 ** 32,
          gpusPerNode: 1,
        }),
      "world",
      MAX_WORLD,
    ],
  ];
  for (const [fn, field, limit] of cases) {
    const e = rejected(fn, field);
    assert.match(e.message, new RegExp(`at most ${limit}`));
    assert.ok(e.fix.length > 0);
  }
  // The limits themselves are accepted.
  const plan = experts(MAX_EXPERTS).roundRobin().topK(MAX_TOPK).hidden(MAX_HIDDEN)
    .compile({ world: MAX_WORLD, gpusPerNode: 8 });
  assert.equal(plan.slotExpert.length, MAX_EXPERTS);
});

Deno.test("deeply nested YAML and JSON texts are WeftErrors, not RangeErrors", () => {
  const depth = 3000;
  const texts: [(text: string) => unknown, string, string][] = [
    [fromYAML, "topK: " + "[".repeat(depth) + "]".repeat(depth), "yaml"],
    [fromYAML, "topK: 2\nplacement:\n" + "- ".repeat(depth) + "1\n", "yaml"],
    [fromYAML, "topK: " + "{a: ".repeat(1500) + "1" + "}".repeat(1500), "yaml"],
    [fromYAML, Array.from({ length: 600 }, (_, i) => " ".repeat(i) + "b:").join("\n"), "yaml"],
    [fromJSON, '{"topK": ' + "[".repeat(depth) + "]".repeat(depth) + "}", "json"],
  ];
  for (const [read, text, field] of texts) {
    const e = rejected(() => read(text), field);
    assert.ok(e.line !== undefined && e.line >= 1, e.message);
    assert.match(e.message, /nest/);
  }
  // Nesting up to the limit still reads (and then fails on the field, as it should).
  const ok = "[".repeat(MAX_NESTING - 1) + "]".repeat(MAX_NESTING - 1);
  rejected(() => fromJSON(`{"placement": {"kind": "byDevice"}, "topK": ${ok}}`), "topK");
});
