/**
 * The text forms of a pattern: YAML for people, JSON for programs. Both hold
 * exactly the {@link PatternSpec} fields, so pattern → text → pattern gives an
 * equal spec. Reading reports the 1-based line of the field at fault, found
 * from the YAML document's node ranges (JSON is read through the same YAML
 * parser for that, since every JSON text is a YAML document).
 *
 * @module
 */
import { isAlias, LineCounter, parseDocument, stringify, visit } from "@std/yaml";
import type { Document } from "@std/yaml";
import { WeftError } from "./errors.ts";
import type { PatternSpec } from "./types.ts";
import { canonicalPattern, readPatternSpec } from "./validate_pattern.ts";

/**
 * Writes a pattern spec as YAML, fields in canonical order, unset optional
 * fields left out.
 *
 * @example
 * ```ts
 * import { specToYAML } from "./yaml.ts";
 * const text = specToYAML({
 *   experts: 8, placement: { kind: "byDevice" }, topK: 2,
 *   dedupe: "device", receive: "expert-major", combine: "weighted", dtype: "bf16",
 * });
 * console.assert(text.startsWith("experts: 8\n"));
 * ```
 */
export function specToYAML(spec: PatternSpec): string {
  return stringify(canonicalPattern(spec));
}

/** Splits a WeftError field such as `placement.owners[3]` into YAML path keys. */
function fieldPath(field: string): (string | number)[] {
  return Array.from(
    field.matchAll(/([^.[\]]+)|\[(\d+)\]/g),
    (m) => m[2] !== undefined ? Number(m[2]) : m[1],
  );
}

/** Minimal view of the yaml node classes: ranges, map pairs, sequence items. */
interface YamlNode {
  range?: [number, number, number] | null;
  items?: unknown[];
}
interface YamlPair {
  key: (YamlNode & { value?: unknown }) | null;
  value: YamlNode | null;
}

function isPair(item: unknown): item is YamlPair {
  return typeof item === "object" && item !== null && "key" in item && "value" in item;
}

/**
 * The line of the deepest node on `path` that exists: a map entry's key line
 * (so an unknown field points at its own line) or a list item's line; a
 * missing field points at the key of the mapping that should hold it (the
 * document's first line for a top-level field).
 */
function lineOf(doc: Document, lines: LineCounter, path: (string | number)[]): number {
  let node = doc.contents as YamlNode | null;
  let offset = node?.range?.[0] ?? 0;
  for (const step of path) {
    const items = node?.items;
    if (items === undefined) break;
    if (typeof step === "number") {
      const item = items[step] as YamlNode | undefined;
      if (item === undefined || isPair(item)) break;
      node = item;
      offset = item.range?.[0] ?? offset;
    } else {
      const pair = items.find((p): p is YamlPair =>
        isPair(p) && p.key !== null && String(p.key.value ?? p.key) === step
      );
      if (pair === undefined) break;
      offset = pair.key?.range?.[0] ?? offset;
      node = pair.value;
    }
  }
  return lines.linePos(offset).line;
}

/** Reads a spec out of a parsed document, or rethrows the WeftError with its line. */
function readWithLines(data: unknown, doc: Document, lines: LineCounter): PatternSpec {
  try {
    return readPatternSpec(data);
  } catch (error) {
    if (!(error instanceof WeftError)) throw error;
    throw new WeftError({
      field: error.field,
      problem: error.problem,
      fix: error.fix,
      line: lineOf(doc, lines, fieldPath(error.field)),
    });
  }
}

/**
 * Reads a pattern spec from YAML. Syntax errors, unknown fields, wrong types
 * and impossible combinations throw a {@link WeftError} with `field` and the
 * 1-based `line`. Absent `dedupe`, `receive`, `combine`, `dtype` take their
 * defaults.
 *
 * @example
 * ```ts
 * import { specFromYAML } from "./yaml.ts";
 * const spec = specFromYAML("placement:\n  kind: roundRobin\ntopK: 4\n");
 * console.assert(spec.placement.kind === "roundRobin" && spec.dtype === "bf16");
 * ```
 */
export function specFromYAML(text: string): PatternSpec {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  const syntax = doc.errors[0];
  if (syntax !== undefined) {
    throw new WeftError({
      field: "yaml",
      problem: syntax.message.split("\n")[0],
      fix: "fix the YAML syntax at that line",
      line: lines.linePos(syntax.pos[0]).line,
      cause: syntax,
    });
  }
  let data: unknown;
  try {
    data = doc.toJS();
  } catch (error) {
    // Alias errors (unresolved, or too many expansions) surface only here,
    // without a position: point at the first alias, the likely culprit.
    let offset = 0;
    visit(doc, (_key, node) => {
      if (!isAlias(node)) return undefined;
      offset = node.range?.[0] ?? 0;
      return visit.BREAK;
    });
    throw new WeftError({
      field: "yaml",
      problem: String((error as Error).message ?? error),
      fix: "define every anchor before its alias, or write the values out",
      line: lines.linePos(offset).line,
      cause: error,
    });
  }
  return readWithLines(data, doc, lines);
}

/**
 * Reads a pattern spec from JSON text or from already-parsed plain data
 * (e.g. the result of `pattern.toJSON()`). Same rules and errors as
 * {@link specFromYAML}; `line` is given when the input is text.
 *
 * @example
 * ```ts
 * import { specFromJSON } from "./yaml.ts";
 * const spec = specFromJSON('{"placement": {"kind": "byDevice"}, "topK": 2}');
 * console.assert(spec.topK === 2);
 * ```
 */
export function specFromJSON(json: unknown): PatternSpec {
  if (typeof json !== "string") return readPatternSpec(json);
  let data: unknown;
  try {
    data = JSON.parse(json);
  } catch (error) {
    const line = /line (\d+)/.exec(String(error))?.[1];
    throw new WeftError({
      field: "json",
      problem: String((error as Error).message ?? error),
      fix: "fix the JSON syntax",
      line: line === undefined ? undefined : Number(line),
      cause: error,
    });
  }
  const lines = new LineCounter();
  return readWithLines(data, parseDocument(json, { lineCounter: lines }), lines);
}
