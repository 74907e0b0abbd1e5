/**
 * How a user's value is written inside an error message: as the user would
 * write it, whatever its type, so a message never misreports what it got
 * (JSON.stringify writes NaN and ±Infinity as `null`, and a BigInt `8n`
 * through String() reads as `8`).
 *
 * @module
 */

/**
 * Renders a user's value for a message: strings quoted, numbers as written
 * (`NaN`, `Infinity`, `-Infinity`, `-0`), BigInts with their `n`, `undefined`
 * as "nothing", arrays and plain objects as JSON with the same rules inside,
 * anything else by String().
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { show } from "./show.ts";
 * assert.equal(show(NaN), "NaN");
 * assert.equal(show(8n), "8n");
 * assert.equal(show([1, -Infinity, "a"]), '[1,-Infinity,"a"]');
 * assert.equal(show(undefined), "nothing");
 * ```
 */
export function show(value: unknown): string {
  if (value === undefined) return "nothing";
  return render(value, 0, new Set());
}

function render(value: unknown, depth: number, seen: Set<unknown>): string {
  switch (typeof value) {
    case "string":
      return JSON.stringify(value);
    case "number":
      return Object.is(value, -0) ? "-0" : String(value);
    case "bigint":
      return `${value}n`;
    case "undefined":
      return "undefined";
    case "object":
      break;
    default:
      return String(value);
  }
  if (value === null) return "null";
  // Deep or cyclic values are cut short: a message needs the start, not all of it.
  if (seen.has(value) || depth > 4) return "…";
  seen.add(value);
  try {
    if (Array.isArray(value)) {
      const head = value.slice(0, 16).map((v) => render(v, depth + 1, seen));
      return `[${head.join(",")}${value.length > 16 ? ",…" : ""}]`;
    }
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) return String(value);
    const entries = Object.entries(value as Record<string, unknown>).slice(0, 16).map(
      ([k, v]) => `${JSON.stringify(k)}:${render(v, depth + 1, seen)}`,
    );
    return `{${entries.join(",")}}`;
  } catch {
    return Object.prototype.toString.call(value);
  } finally {
    seen.delete(value);
  }
}
