/**
 * A layout's inspection forms: plain JSON data and YAML text, and back. The
 * plan travels through the one table of plan fields (plan_fields.ts), so every
 * PlanSpec field, `quantize` included, survives the round trip.
 *
 * @module
 */
import { Document, parse as parseYaml, visit } from "@std/yaml";
import type { BatchLayout, LinkTraffic, PlanSpec, RankLayout } from "./types.ts";
import { WeftError } from "./errors.ts";
import { planFromJSON, planToJSON } from "./plan_fields.ts";

/**
 * A plain-data copy of a layout (typed arrays → number arrays), for
 * `JSON.stringify`, snapshots and inspection. {@link layoutFromJSON} inverts it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { computeLayout, layoutToJSON } from "./layout.ts";
 * import { compilePlacement } from "./placement.ts";
 * import type { PlanSpec } from "./types.ts";
 * const pattern = { placement: { kind: "roundRobin" }, topK: 1, dedupe: "none", receive: "expert-major", combine: "sum", dtype: "bf16" } as const;
 * const plan: PlanSpec = {
 *   pattern, world: 1, gpusPerNode: 1, nodes: 1, experts: 2, topK: 1, hidden: 4, dtype: "bf16",
 *   dedupe: "none", receive: "expert-major", combine: "sum",
 *   ...compilePlacement({ placement: pattern.placement, experts: 2, world: 1, gpusPerNode: 1 }),
 * };
 * const json = layoutToJSON(computeLayout(plan, [Int32Array.of(1, 0)])) as { ranks: { srcToken: number[] }[] };
 * assert.ok(json.ranks[0].srcToken.join() === "1,0");
 * ```
 */
export function layoutToJSON(l: BatchLayout): unknown {
  const plan = planToJSON(l.plan);
  const ranks = l.ranks.map((r) => {
    const o: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(r)) o[k] = v instanceof Int32Array ? Array.from(v) : v;
    return o;
  });
  return { plan, ranks, links: l.links.map((x) => ({ ...x })) };
}

/**
 * Rebuild a layout from {@link layoutToJSON}'s output (or its JSON/YAML text
 * parsed back): number arrays of ranks and plan tables become Int32Arrays.
 * The plan comes back as plain {@link PlanSpec} data (the fields present).
 *
 * @throws {WeftError} `layout` when the value is not a layout; `layout.plan.<field>`
 *   for a plan field that is unknown or of the wrong kind.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { layoutFromJSON } from "./layout_text.ts";
 * const l = layoutFromJSON({ plan: { slotBase: [0, 1] }, ranks: [{ rank: 0, slotOf: [0] }], links: [] });
 * assert.ok(l.ranks[0].slotOf instanceof Int32Array);
 * ```
 */
export function layoutFromJSON(json: unknown): BatchLayout {
  const o = json as { plan?: Record<string, unknown>; ranks?: unknown; links?: unknown };
  if (
    o === null || typeof o !== "object" || typeof o.plan !== "object" || o.plan === null ||
    !Array.isArray(o.ranks) || !Array.isArray(o.links)
  ) {
    throw new WeftError({
      field: "layout",
      problem: "is not a layout: expected {plan, ranks[], links[]}",
      fix: "pass the output of layoutToJSON (or its JSON/YAML text, parsed)",
    });
  }
  const plan = planFromJSON(o.plan, "layout.plan");
  const ranks = (o.ranks as Record<string, unknown>[]).map((r) => {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(r)) out[k] = Array.isArray(v) ? Int32Array.from(v) : v;
    return out as unknown as RankLayout;
  });
  const links = (o.links as LinkTraffic[]).map((x) => ({ ...x }));
  return { plan: plan as unknown as PlanSpec, ranks, links };
}

/**
 * The layout as YAML, index arrays written as one-line flow sequences so a
 * rank's layout reads as a table.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { layoutFromYAML, layoutToYAML } from "./layout_text.ts";
 * const l = layoutFromYAML("plan: {slotBase: [0, 1]}\nranks: [{rank: 0, slotOf: [0]}]\nlinks: []\n");
 * assert.ok(layoutToYAML(l).includes("slotOf: [ 0 ]"));
 * ```
 */
export function layoutToYAML(l: BatchLayout): string {
  const doc = new Document(layoutToJSON(l));
  visit(doc, {
    Seq(_key, node) {
      if (
        node.items.every((item) => !(item !== null && typeof item === "object" && "items" in item))
      ) {
        node.flow = true;
      }
    },
  });
  return doc.toString({ lineWidth: 100 });
}

/**
 * Parse {@link layoutToYAML}'s text back into a layout.
 *
 * @throws {WeftError} `layout` on YAML syntax errors (with the line) or a non-layout value.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { layoutFromYAML } from "./layout_text.ts";
 * assert.ok(layoutFromYAML("plan: {}\nranks: []\nlinks: []\n").ranks.length === 0);
 * ```
 */
export function layoutFromYAML(text: string): BatchLayout {
  let value: unknown;
  try {
    value = parseYaml(text);
  } catch (cause) {
    const line = (cause as { linePos?: { line: number }[] }).linePos?.[0]?.line;
    throw new WeftError({
      field: "layout",
      problem: `is not valid YAML: ${(cause as Error).message}`,
      fix: "pass text written by layoutToYAML",
      line,
      cause,
    });
  }
  return layoutFromJSON(value);
}
