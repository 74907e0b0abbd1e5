/**
 * Where a pattern text goes wrong before its fields are read: the position of
 * a JSON syntax error (JSON.parse names none for most errors), and the depth
 * of nested lists and mappings, bounded by {@link MAX_NESTING} so that a
 * small hostile text cannot exhaust the stack of the readers that follow.
 *
 * @module
 */
import { MAX_NESTING } from "./limits.ts";

/** A syntax error in a JSON text: its 0-based offset and what is wrong there. */
export interface JsonSyntaxError {
  /** 0-based offset into the text. */
  readonly offset: number;
  /** What is wrong at that offset. */
  readonly problem: string;
}

const WS = new Set([" ", "\t", "\n", "\r"]);
const LITERALS = ["true", "false", "null"];
const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
// JSON strings may not hold raw control characters (U+0000–U+001F): intended.
// deno-lint-ignore no-control-regex
const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;

/**
 * The first syntax error of a JSON text (RFC 8259), or undefined for a valid
 * one. Nesting deeper than {@link MAX_NESTING} counts as an error too, at the
 * bracket that goes one level too deep; the scan never recurses deeper.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { findJsonSyntaxError } from "./text_limits.ts";
 * assert.equal(findJsonSyntaxError('{"a": 1}'), undefined);
 * assert.equal(findJsonSyntaxError('{"a": tru}')?.offset, 6);
 * assert.equal(findJsonSyntaxError("")?.offset, 0);
 * ```
 */
export function findJsonSyntaxError(text: string): JsonSyntaxError | undefined {
  let i = 0;
  const fail = (problem: string): JsonSyntaxError => ({ offset: i, problem });
  const skip = () => {
    while (i < text.length && WS.has(text[i])) i++;
  };
  const token = (re: RegExp): boolean => {
    re.lastIndex = i;
    if (!re.test(text)) return false;
    i = re.lastIndex;
    return true;
  };
  const value = (depth: number): JsonSyntaxError | undefined => {
    skip();
    if (i >= text.length) return fail("the text ends where a value should start");
    const c = text[i];
    if (c === "\uFEFF") return fail("a byte order mark (U+FEFF) is not allowed in JSON");
    if (c === "{" || c === "[") {
      if (depth >= MAX_NESTING) {
        return fail(`lists and mappings are nested deeper than ${MAX_NESTING} levels`);
      }
      const close = c === "{" ? "}" : "]";
      i++;
      skip();
      if (text[i] === close) {
        i++;
        return undefined;
      }
      for (;;) {
        if (c === "{") {
          skip();
          if (!token(STRING)) return fail("expected a field name in double quotes");
          skip();
          if (text[i] !== ":") return fail("expected ':' after the field name");
          i++;
        }
        const inner = value(depth + 1);
        if (inner !== undefined) return inner;
        skip();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === close) {
          i++;
          return undefined;
        }
        return fail(`expected ',' or '${close}'`);
      }
    }
    if (c === '"') return token(STRING) ? undefined : fail("malformed string");
    if (token(NUMBER)) return undefined;
    for (const word of LITERALS) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return undefined;
      }
    }
    return fail(`unexpected ${JSON.stringify(c)} where a value should start`);
  };
  const error = value(0);
  if (error !== undefined) return error;
  skip();
  return i < text.length ? fail("unexpected text after the JSON value") : undefined;
}

/** A node of a parsed YAML document, as far as nesting goes. */
interface Nested {
  items?: unknown[];
  value?: unknown;
  range?: [number, number, number] | null;
}

/**
 * The offset of the first node of a parsed YAML document that lies deeper
 * than {@link MAX_NESTING} lists and mappings, or undefined. Walks with an
 * explicit stack, so any depth is safe to inspect.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseDocument } from "@std/yaml";
 * import { findDeepYamlNode } from "./text_limits.ts";
 * assert.equal(findDeepYamlNode(parseDocument("a: [1, [2]]").contents), undefined);
 * assert.ok(findDeepYamlNode(parseDocument("a: " + "[".repeat(40) + "]".repeat(40)).contents) !== undefined);
 * ```
 */
export function findDeepYamlNode(root: unknown): number | undefined {
  const stack: [Nested, number][] = [];
  if (root !== null && typeof root === "object") stack.push([root as Nested, 0]);
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    const items = node.items;
    if (!Array.isArray(items)) continue;
    if (depth >= MAX_NESTING) return node.range?.[0] ?? 0;
    for (const item of items) {
      if (item === null || typeof item !== "object") continue;
      // A mapping's items are pairs: their key and value sit one level down.
      const pair = item as { key?: unknown; value?: unknown };
      const children = "key" in pair ? [pair.key, pair.value] : [item];
      for (const child of children) {
        if (child !== null && typeof child === "object") stack.push([child as Nested, depth + 1]);
      }
    }
  }
  return undefined;
}
