/**
 * The routing check the layout compiler needs before it builds anything:
 * one rank's expert ids, on the host. Lives in the pattern layer so that
 * `computeLayout` stands on its own; the engines' input checks (tensors,
 * weights, rows) build on it in lib/core/input_check.ts.
 *
 * @module
 */
import type { PlanSpec } from "./types.ts";
import { WeftError } from "./errors.ts";

function bad(field: string, rank: number, problem: string, fix: string): never {
  throw new WeftError({ field, rank, problem, fix });
}

/** A value's kind for a message: its constructor's name, or its typeof. */
export function describe(v: unknown): string {
  if (v === null) return "null";
  if (typeof v !== "object") return typeof v;
  return (v as object).constructor?.name ?? "object";
}

/**
 * Check one rank's `topkIdx` held in a host array: T×K ids, each -1 or in
 * [0, experts), no expert twice in one token. Returns T. (Tensors are checked
 * by their shape in lib/core/input_check.ts, which calls this for arrays.)
 *
 * @throws {WeftError} `topkIdx` for a wrong type, a length that is not T×K
 *   (reported as a K mismatch when it is a whole number of other-K rows), an
 *   id out of range or a duplicated expert.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkTopkIdxArray } from "./check_routing.ts";
 * assert.ok(checkTopkIdxArray({ experts: 4, topK: 2 }, 0, Int32Array.of(0, 1, 3, -1)) === 2);
 * ```
 */
export function checkTopkIdxArray(
  plan: Pick<PlanSpec, "experts" | "topK">,
  rank: number,
  topkIdx: unknown,
  tokens?: number,
): number {
  const K = plan.topK;
  const E = plan.experts;
  if (!(topkIdx instanceof Int32Array)) {
    bad(
      "topkIdx",
      rank,
      `must be an Int32Array or an i32 tensor, got ${describe(topkIdx)}`,
      "wrap the ids with Int32Array.from(ids)",
    );
  }
  const L = topkIdx.length;
  if (tokens === undefined) {
    if (L % K !== 0) {
      bad(
        "topkIdx",
        rank,
        `has ${L} entries, not a multiple of the plan's topK ${K} (K mismatch?)`,
        `pass T × ${K} ids, padding unused slots with -1, or compile with the K your router uses`,
      );
    }
    tokens = L / K;
  } else if (L !== tokens * K) {
    if (tokens > 0 && L % tokens === 0) {
      bad(
        "topkIdx",
        rank,
        `has ${L} = ${tokens} × ${
          L / tokens
        } entries for ${tokens} tokens: K mismatch, the plan's topK is ${K}`,
        `pass ${K} ids per token (pad with -1), or compile the plan with topK(${L / tokens})`,
      );
    }
    bad(
      "topkIdx",
      rank,
      `has ${L} entries, expected tokens × topK = ${tokens} × ${K} = ${tokens * K}`,
      `pass ${K} ids for each of the ${tokens} tokens of x`,
    );
  }
  // seen[e] = t + 1 when token t already listed e: one pass, no clearing.
  const seen = new Int32Array(E);
  for (let t = 0; t < tokens; t++) {
    const row = t * K;
    for (let k = 0; k < K; k++) {
      const e = topkIdx[row + k];
      if (e === -1) continue;
      if (e < -1 || e >= E) {
        bad(
          "topkIdx",
          rank,
          `token ${t} slot ${k} holds expert ${e}, outside [0, ${E}) (and not -1 for an empty slot)`,
          `route to experts 0…${E - 1}, or use -1 for an unused slot`,
        );
      }
      if (seen[e] === t + 1) {
        let first = 0;
        while (topkIdx[row + first] !== e) first++;
        bad(
          "topkIdx",
          rank,
          `token ${t} lists expert ${e} twice (slots ${first} and ${k})`,
          "give each token distinct experts in its top-k; use -1 for unused slots",
        );
      }
      seen[e] = t + 1;
    }
  }
  return tokens;
}
