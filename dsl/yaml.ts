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
import { canonicalPattern } from "./validate_pattern.ts";
import { readPatternSpec } from "./read_pattern.ts";
import { MAX_NESTING } from "./limits.ts";
import { findDeepYamlNode, findJsonSyntaxError } from "./text_limits.ts";

const NESTING_FIX = `keep lists and mappings within ${MAX_NESTING} levels (MAX_NESTING); ` +
  "a pattern needs three";

/** Parses YAML (or JSON) text; a text that nests too deep for the parser's stack is a WeftError. */
function parseText(text: string, lines: LineCounter, field: "yaml" | "json"): Document {
  try {
    return parseDocument(text, { lineCounter: lines, prettyErrors: false });
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    throw new WeftError({
      field,
      problem: `nests too deep to read (${error.message})`,
      fix: NESTING_FIX,
      cause: error,
    });
  }
}

/** Rejects a document nested deeper than MAX_NESTING, at the first node past it. */
function checkNesting(doc: Document, lines: LineCounter, field: "yaml" | "json"): void {
  const offset = findDeepYamlNode(doc.contents);
  if (offset === undefined) return;
  const pos = lines.linePos(offset);
  throw new WeftError({
    field,
    problem: `lists and mappings are nested deeper than ${MAX_NESTING} levels`,
    fix: NESTING_FIX,
    line: pos.line,
    column: pos.col,
  });
}

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
  const doc = parseText(text, lines, "yaml");
  const syntax = doc.errors[0];
  if (syntax !== undefined) {
    const pos = lines.linePos(syntax.pos[0]);
    // The parser reports its own stack overflow as a syntax error.
    const tooDeep = syntax.message.includes("call stack");
    throw new WeftError({
      field: "yaml",
      problem: tooDeep
        ? `nests too deep to read (${syntax.message.split("\n")[0]})`
        : syntax.message.split("\n")[0],
      fix: tooDeep ? NESTING_FIX : "fix the YAML syntax at that line",
      line: pos.line,
      column: pos.col,
      cause: syntax,
    });
  }
  checkNesting(doc, lines, "yaml");
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
  // JSON.parse names no position for most errors: find it, so the message
  // can give the line and column (a BOM and an empty text included).
  const syntax = findJsonSyntaxError(json);
  if (syntax !== undefined) {
    const pos = new LineCounter();
    pos.addNewLine(0);
    for (let i = json.indexOf("\n"); i >= 0; i = json.indexOf("\n", i + 1)) pos.addNewLine(i + 1);
    const { line, col } = pos.linePos(syntax.offset);
    throw new WeftError({
      field: "json",
      problem: `is not valid JSON: ${syntax.problem}`,
      fix: syntax.problem.includes("nested") ? NESTING_FIX : "fix the JSON syntax at that position",
      line,
      column: col,
    });
  }
  const data: unknown = JSON.parse(json);
  const lines = new LineCounter();
  return readWithLines(data, parseText(json, lines, "json"), lines);
}
