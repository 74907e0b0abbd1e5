/**
 * Reading a pattern from untrusted plain data (parsed YAML or JSON): the
 * field names and shapes a pattern text may have, before the rules of
 * validate_pattern.ts check the values.
 *
 * @module
 */
import { WeftError } from "./errors.ts";
import type { BasePlacement, PatternSpec, Replication } from "./types.ts";
import { show } from "./show.ts";
import {
  BALANCE_MODES,
  canonicalPattern,
  checkEnum,
  checkExpertCount,
  checkHidden,
  checkPatternDraft,
  isRecord,
  PATTERN_DEFAULTS,
  PATTERN_FIELDS,
  PLACEMENT_KINDS,
  QUANTIZES,
} from "./validate_pattern.ts";

/**
 * The fields of a mapping that hold a value: a key set to `undefined` reads
 * as absent, as it does for the types (`experts?: number`) and for
 * `Plan.compile`, so optional fields may be passed explicitly unset and a
 * required one set to `undefined` is reported as missing.
 */
function present(value: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(value)) if (value[key] !== undefined) out[key] = value[key];
  return out;
}

function rejectUnknownFields(
  where: string,
  value: Record<string, unknown>,
  known: readonly string[],
): void {
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) {
      throw new WeftError({
        field: where === "" ? key : `${where}.${key}`,
        problem: "is not a field weft knows",
        fix: `remove it; the fields here are ${known.join(", ")}`,
      });
    }
  }
}

function readPlacement(given: unknown): BasePlacement {
  if (!isRecord(given)) {
    throw new WeftError({
      field: "placement",
      problem: `must be a mapping with a \`kind\`, got ${show(given)}`,
      fix: 'write e.g. placement: { kind: "byDevice" }',
    });
  }
  const value = present(given);
  checkEnum("placement.kind", value.kind, PLACEMENT_KINDS);
  if (value.kind === "table") {
    rejectUnknownFields("placement", value, ["kind", "owners"]);
    if (!("owners" in value)) {
      throw new WeftError({
        field: "placement.owners",
        problem: "is missing; a table placement lists one owner rank per expert",
        fix: "add owners: [rank of expert 0, rank of expert 1, …]",
      });
    }
    return { kind: "table", owners: value.owners as number[] };
  }
  rejectUnknownFields("placement", value, ["kind"]);
  return { kind: value.kind };
}

function readReplicas(given: unknown): Replication {
  if (!isRecord(given)) {
    throw new WeftError({
      field: "replicas",
      problem: `must be a mapping with \`experts\` and \`copies\`, got ${show(given)}`,
      fix: "write e.g. replicas: { experts: [3, 17], copies: 2 }",
    });
  }
  const value = present(given);
  rejectUnknownFields("replicas", value, ["experts", "copies"]);
  return { experts: value.experts as number[], copies: value.copies as number };
}

/**
 * Reads a pattern from untrusted plain data (parsed YAML or JSON): rejects
 * unknown fields, wrong types and impossible combinations with a
 * {@link WeftError} naming the field (a path such as `placement.owners[3]`),
 * fills the documented defaults for `dedupe`, `receive`, `combine` and
 * `dtype`, and returns a canonical, deeply frozen {@link PatternSpec}.
 * `placement` and `topK` are required.
 *
 * @example
 * ```ts
 * import { readPatternSpec } from "./read_pattern.ts";
 * const spec = readPatternSpec({ placement: { kind: "byDevice" }, topK: 8 });
 * console.assert(spec.dedupe === "device" && Object.isFrozen(spec));
 * ```
 */
export function readPatternSpec(given: unknown): PatternSpec {
  if (!isRecord(given)) {
    throw new WeftError({
      field: "pattern",
      problem: `must be a mapping of pattern fields, got ${show(given)}`,
      fix: "write the pattern as fields such as placement, topK, dedupe",
    });
  }
  const input = present(given);
  rejectUnknownFields("", input, PATTERN_FIELDS);
  if (!("placement" in input)) {
    throw new WeftError({
      field: "placement",
      problem: "is missing (absent or undefined)",
      fix: 'add placement: { kind: "byDevice" } (or roundRobin, or table with owners)',
    });
  }
  if (!("topK" in input)) {
    throw new WeftError({
      field: "topK",
      problem: "is missing (absent or undefined)",
      fix: "add topK: k, the number of experts each token is routed to",
    });
  }
  // Only an absent field takes the default: `dedupe: ~` is a mistake to report.
  const orDefault = (key: keyof typeof PATTERN_DEFAULTS): unknown =>
    key in input ? input[key] : PATTERN_DEFAULTS[key];
  const draft = {
    experts: input.experts,
    placement: readPlacement(input.placement),
    replicas: "replicas" in input ? readReplicas(input.replicas) : undefined,
    topK: input.topK,
    dedupe: orDefault("dedupe"),
    receive: orDefault("receive"),
    combine: orDefault("combine"),
    dtype: orDefault("dtype"),
    quantize: input.quantize,
    balance: input.balance,
    hidden: input.hidden,
  } as PatternSpec;
  // `experts: ~` must not read as "unset" (checkPatternDraft skips undefined).
  if ("experts" in input) checkExpertCount("experts", input.experts);
  if ("hidden" in input) checkHidden("hidden", input.hidden);
  if ("quantize" in input) checkEnum("quantize", input.quantize, QUANTIZES);
  if ("balance" in input) checkEnum("balance", input.balance, BALANCE_MODES);
  checkPatternDraft(draft);
  return canonicalPattern(draft);
}
