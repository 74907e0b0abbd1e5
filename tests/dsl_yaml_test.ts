import { strict as assert } from "node:assert";
import fc from "fast-check";
import { WeftError } from "../dsl/errors.ts";
import {
  type CompletePattern,
  experts,
  type FreshState,
  fromJSON,
  fromYAML,
  type Pattern,
} from "../dsl/mod.ts";
import type { Balance, CombineOp, Dedupe, DType, Quantize, ReceiveOrder } from "../dsl/types.ts";
import { MAX_TOPK } from "../dsl/limits.ts";

/** Asserts that reading `text` fails on `field` at 1-based `line`. */
function assertRejected(
  read: (text: string) => unknown,
  text: string,
  field: string,
  line: number,
): WeftError {
  try {
    read(text);
  } catch (error) {
    assert.ok(error instanceof WeftError, `expected a WeftError, got ${error}`);
    assert.equal(error.field, field, error.message);
    assert.equal(error.line, line, error.message);
    assert.ok(error.message.includes(field) && error.message.includes(`line ${line}`));
    return error;
  }
  assert.fail(`expected ${field} at line ${line} to be rejected`);
}

/** A pattern between its placement and its topK, whether replicated or sized or not. */
type Building = Pattern<{ counted: true; topK: false; replicated: boolean; sized: boolean }>;

/** Random valid patterns, built through the DSL itself. */
const patterns: fc.Arbitrary<CompletePattern> = fc
  .record({
    experts: fc.integer({ min: 1, max: 64 }),
    stateCount: fc.boolean(),
    placement: fc.constantFrom("byDevice", "roundRobin", "table"),
    owners: fc.array(fc.integer({ min: 0, max: 15 }), { minLength: 64, maxLength: 64 }),
    hot: fc.uniqueArray(fc.integer({ min: 0, max: 63 }), { maxLength: 4 }),
    copies: fc.integer({ min: 2, max: 8 }),
    k: fc.integer({ min: 1, max: 64 }),
    dedupe: fc.option(fc.constantFrom<Dedupe>("none", "device", "node"), { nil: undefined }),
    receive: fc.option(fc.constantFrom<ReceiveOrder>("expert-major", "rank-major"), {
      nil: undefined,
    }),
    combine: fc.option(fc.constantFrom<CombineOp>("weighted", "sum"), { nil: undefined }),
    dtype: fc.option(fc.constantFrom<DType>("bf16", "f16", "f32"), { nil: undefined }),
    hidden: fc.option(fc.integer({ min: 1, max: 2048 }).map((n) => n * 8), { nil: undefined }),
    quantize: fc.option(fc.constantFrom<Quantize | "none">("e4m3", "none"), { nil: undefined }),
    balance: fc.option(fc.constantFrom<Balance>("rail", "greedy"), { nil: undefined }),
  })
  .map((r) => {
    const ids = r.hot.filter((e) => e < r.experts);
    const placed: Pattern<FreshState<true>> = r.placement === "table"
      ? experts.table(r.owners.slice(0, r.experts))
      : r.stateCount
      ? experts(r.experts)[r.placement]()
      : experts[r.placement]().count(r.experts);
    let p: Building = ids.length > 0 ? placed.replicate(ids, r.copies) : placed;
    if (r.dedupe) p = p.dedupe(r.dedupe);
    if (r.receive) p = p.receive(r.receive);
    if (r.combine) p = p.combine(r.combine);
    if (r.dtype) p = p.dtype(r.dtype);
    // e4m3 scales blocks of 128 elements: round a quantized pattern's hidden up to one.
    if (r.quantize === "e4m3") p = p.hidden(Math.ceil((r.hidden ?? 128) / 128) * 128);
    else if (r.hidden) p = p.hidden(r.hidden);
    if (r.quantize) p = p.quantize(r.quantize);
    if (r.balance) p = p.balance(r.balance);
    return p.topK(1 + (r.k - 1) % Math.min(r.experts, MAX_TOPK));
  });

Deno.test("YAML round-trips every valid pattern to a deep-equal spec", () => {
  fc.assert(
    fc.property(patterns, (p) => {
      const text = p.toYAML();
      const back = fromYAML(text);
      assert.deepStrictEqual(back.spec, p.spec);
      assert.equal(back.toYAML(), text);
    }),
    { numRuns: 300 },
  );
});

Deno.test("JSON round-trips every valid pattern, as text and as data", () => {
  fc.assert(
    fc.property(patterns, (p) => {
      assert.deepStrictEqual(fromJSON(JSON.stringify(p)).spec, p.spec);
      assert.deepStrictEqual(fromJSON(p.toJSON()).spec, p.spec);
    }),
    { numRuns: 300 },
  );
});

Deno.test("toYAML writes the fields in canonical order", () => {
  const text = experts(64).byDevice().replicate([3, 17], 2).topK(8).hidden(7168).toYAML();
  assert.equal(
    text,
    [
      "experts: 64",
      "placement:",
      "  kind: byDevice",
      "replicas:",
      "  experts:",
      "    - 3",
      "    - 17",
      "  copies: 2",
      "topK: 8",
      "dedupe: device",
      "receive: expert-major",
      "combine: weighted",
      "dtype: bf16",
      "hidden: 7168",
      "",
    ].join("\n"),
  );
});

Deno.test("a hand-written YAML file takes the defaults for the options it omits", () => {
  const p = fromYAML("placement: { kind: roundRobin }\ntopK: 2\n");
  assert.deepEqual(p.spec, experts.roundRobin().topK(2).spec);
});

Deno.test("YAML with an unknown field is rejected at that field's line", () => {
  assertRejected(fromYAML, "placement:\n  kind: byDevice\ntopK: 8\nhiden: 7168\n", "hiden", 4);
  assertRejected(
    fromYAML,
    "placement:\n  kind: byDevice\n  owners: [0]\ntopK: 8\n",
    "placement.owners",
    3,
  );
  assertRejected(
    fromYAML,
    "placement: { kind: byDevice }\nreplicas:\n  experts: [1]\n  copies: 2\n  spread: 1\ntopK: 1\n",
    "replicas.spread",
    5,
  );
});

Deno.test("YAML with a wrong type is rejected at that field's line", () => {
  assertRejected(fromYAML, "placement:\n  kind: byDevice\ntopK: eight\n", "topK", 3);
  assertRejected(fromYAML, "experts: '8'\nplacement:\n  kind: byDevice\ntopK: 8\n", "experts", 1);
  assertRejected(fromYAML, "placement:\n  kind: byDevice\ntopK: 8\nhidden: ~\n", "hidden", 4);
  assertRejected(fromYAML, "placement:\n  kind: byDevice\ntopK: 8\ndedupe: nodes\n", "dedupe", 4);
  assertRejected(fromYAML, "placement:\n  kind: byDevice\ntopK: 8\ndtype: fp8\n", "dtype", 4);
  assertRejected(fromYAML, "placement:\n  kind: byDevice\ntopK: 8\nbalance: fusco\n", "balance", 4);
  assertRejected(fromYAML, "placement:\n  kind: byDevice\ntopK: 8\nbalance: ~\n", "balance", 4);
  assertRejected(fromYAML, "placement:\n  kind: spread\ntopK: 8\n", "placement.kind", 2);
  assertRejected(fromYAML, "placement: byDevice\ntopK: 8\n", "placement", 1);
  assertRejected(
    fromYAML,
    "placement:\n  kind: table\n  owners:\n    - 0\n    - one\ntopK: 1\n",
    "placement.owners[1]",
    5,
  );
  assertRejected(fromYAML, "- topK: 8\n", "pattern", 1);
});

Deno.test("YAML with an impossible combination is rejected at the offending field's line", () => {
  assertRejected(fromYAML, "experts: 4\nplacement:\n  kind: byDevice\ntopK: 8\n", "topK", 4);
  assertRejected(
    fromYAML,
    "experts: 3\nplacement:\n  kind: table\n  owners: [0, 1]\ntopK: 1\n",
    "placement.owners",
    4,
  );
  assertRejected(
    fromYAML,
    "experts: 8\nplacement:\n  kind: byDevice\nreplicas:\n  experts:\n    - 3\n    - 3\n  copies: 2\ntopK: 1\n",
    "replicas.experts[1]",
    7,
  );
  assertRejected(
    fromYAML,
    "experts: 8\nplacement:\n  kind: byDevice\nreplicas:\n  experts: [3]\n  copies: 1\ntopK: 1\n",
    "replicas.copies",
    6,
  );
  assertRejected(fromYAML, "placement:\n  kind: byDevice\ntopK: 8\nhidden: 7170\n", "hidden", 4);
});

Deno.test("YAML missing a required field is rejected at the key of the mapping that lacks it", () => {
  assertRejected(fromYAML, "\n\nplacement:\n  kind: byDevice\n", "topK", 3);
  assertRejected(fromYAML, "topK: 8\n", "placement", 1);
  assertRejected(fromYAML, "placement:\n  kind: table\ntopK: 8\n", "placement.owners", 1);
});

Deno.test("YAML syntax errors, duplicate keys and bad aliases are rejected with their line", () => {
  assertRejected(fromYAML, "placement:\n  kind: byDevice\ntopK: 8: 9\nhidden: 8\n", "yaml", 3);
  assertRejected(fromYAML, "placement: { kind: byDevice }\ntopK: *k\n", "yaml", 2);
  assertRejected(fromYAML, "topK: 1\n---\ntopK: 2\n", "yaml", 2);
  assertRejected(fromYAML, "placement:\n  kind: byDevice\ntopK: 8\ntopK: 4\n", "yaml", 4);
});

Deno.test("JSON text is rejected with field and line like YAML", () => {
  assertRejected(
    fromJSON,
    '{\n  "placement": { "kind": "byDevice" },\n  "topK": 8,\n  "dedup": "none"\n}',
    "dedup",
    4,
  );
  assertRejected(fromJSON, '{\n  "placement": { "kind": "byDevice" },\n  "topK": 0\n}', "topK", 3);
  const syntax = (() => {
    try {
      fromJSON('{"topK": }');
    } catch (error) {
      return error;
    }
  })();
  assert.ok(syntax instanceof WeftError && syntax.field === "json");
});

Deno.test("JSON data is rejected with the field", () => {
  assert.throws(
    () => fromJSON({ placement: { kind: "byDevice" }, topK: 2, extra: true }),
    (e: unknown) => e instanceof WeftError && e.field === "extra",
  );
});
