/**
 * The Simulator's settings: which protocol executes a batch, and the staged
 * protocol's slice size and combine wire.
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import { WeftError } from "../../dsl/errors.ts";
import { checkSliceRows } from "./slices.ts";

/** How {@link Simulator} executes a batch. */
export interface SimulatorOptions {
  /**
   * `"one-hop"` (default): every row straight from its source to its
   * destination, the normative result. `"staged"`: the hierarchical
   * protocol of dedupe `node` executed stage by stage (route, exchange,
   * bases, pack, slices, forwarder staging, fan-out; combine through the
   * forwarders), with explicit buffers per stage and byte counts per stage.
   */
  readonly protocol?: "one-hop" | "staged";
  /** Staged only: rows per slice on the inter-node streams (an integer ≥ 1; default 64). */
  readonly sliceRows?: number;
  /**
   * Staged only: the dtype a combine partial crosses ranks in. `"f32"`
   * (default): bitwise equal to the one-hop combine. `"dtype"`: the
   * pattern's dtype, as a bandwidth-saving GPU path would send it.
   */
  readonly combineWire?: "f32" | "dtype";
}

/** {@link SimulatorOptions} with every default filled in. */
export interface ResolvedSimulatorOptions {
  /** The protocol. */
  readonly protocol: "one-hop" | "staged";
  /** Rows per slice (staged). */
  readonly sliceRows: number;
  /** The wire dtype of combine partials (staged): f32 or the plan's dtype. */
  readonly combineWire: DType;
}

/** Rows per slice when none is given. */
export const DEFAULT_SLICE_ROWS = 64;

/**
 * Check and complete a Simulator's options for `plan`.
 *
 * @throws {WeftError} `protocol` for an unknown protocol, or `staged` on a
 *   plan whose dedupe is not `node`; `sliceRows`/`combineWire` for a bad
 *   value, or either given with the one-hop protocol (it has no slices or wire).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { resolveSimulatorOptions } from "./options.ts";
 * const o = resolveSimulatorOptions({ dedupe: "node", dtype: "bf16" }, { protocol: "staged", combineWire: "dtype" });
 * assert.deepEqual(o, { protocol: "staged", sliceRows: 64, combineWire: "bf16" });
 * ```
 */
export function resolveSimulatorOptions(
  plan: Pick<PlanSpec, "dedupe" | "dtype">,
  options: SimulatorOptions = {},
): ResolvedSimulatorOptions {
  const protocol = options.protocol ?? "one-hop";
  if (protocol !== "one-hop" && protocol !== "staged") {
    throw new WeftError({
      field: "protocol",
      problem: `is ${JSON.stringify(protocol)}`,
      fix: 'use "one-hop" (the default) or "staged"',
    });
  }
  if (protocol === "one-hop") {
    for (const field of ["sliceRows", "combineWire"] as const) {
      if (options[field] !== undefined) {
        throw new WeftError({
          field,
          problem: "is a setting of the staged protocol, and the protocol is one-hop",
          fix: `pass protocol: "staged" with it, or leave ${field} out`,
        });
      }
    }
    return { protocol, sliceRows: DEFAULT_SLICE_ROWS, combineWire: "f32" };
  }
  if (plan.dedupe !== "node") {
    throw new WeftError({
      field: "protocol",
      problem:
        `"staged" executes the hierarchical protocol of dedupe node; the plan's dedupe is ${plan.dedupe}`,
      fix: 'compile the pattern with dedupe("node"), or use protocol "one-hop"',
    });
  }
  const sliceRows = options.sliceRows ?? DEFAULT_SLICE_ROWS;
  checkSliceRows(sliceRows);
  const wire = options.combineWire ?? "f32";
  if (wire !== "f32" && wire !== "dtype") {
    throw new WeftError({
      field: "combineWire",
      problem: `is ${JSON.stringify(wire)}`,
      fix: 'use "f32" (bitwise equal to one-hop) or "dtype" (the pattern\'s dtype)',
    });
  }
  return { protocol, sliceRows, combineWire: wire === "f32" ? "f32" : plan.dtype };
}
