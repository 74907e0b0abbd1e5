/**
 * Loaders of saved routing traces: JSON (nested arrays per rank) and NumPy
 * `.npy` (int32/int64 ids, float32/float64 weights). Both check structure and
 * that every id fits in int32, naming the entry at fault.
 *
 * @module
 */
import type { RankRouting } from "./routing.ts";
import { WeftError } from "../../dsl/errors.ts";
import { parseNpy } from "./npy.ts";
import { show } from "../../dsl/show.ts";

function loadError(field: string, problem: string, fix: string, rank?: number): never {
  throw new WeftError({ field, problem, fix, ...(rank !== undefined ? { rank } : {}) });
}

/** Equal weights over a token's routed slots (loaders without weights). */
function equalWeights(topkIdx: Int32Array, K: number): Float32Array {
  const w = new Float32Array(topkIdx.length);
  for (let t = 0; t < topkIdx.length / K; t++) {
    let n = 0;
    for (let k = 0; k < K; k++) if (topkIdx[t * K + k] >= 0) n++;
    for (let k = 0; k < K; k++) if (topkIdx[t * K + k] >= 0) w[t * K + k] = 1 / n;
  }
  return w;
}

/** A [T][K] nested array (or [] for T = 0) → flat values, checked rectangular and numeric. */
function flatten2(
  v: unknown,
  field: string,
  ints: boolean,
  K: number | undefined,
  rank: number,
): { data: number[]; K: number | undefined } {
  if (!Array.isArray(v)) {
    loadError(
      field,
      `must be an array of per-token arrays, got ${typeof v}`,
      "write [[e0, e1, …], …] per rank",
    );
  }
  const data: number[] = [];
  for (let t = 0; t < v.length; t++) {
    const row = v[t];
    if (!Array.isArray(row)) {
      loadError(
        `${field}[${t}]`,
        `must be an array of ${K ?? "K"} numbers`,
        "write one array per token",
      );
    }
    K ??= row.length;
    if (row.length !== K) {
      loadError(
        `${field}[${t}]`,
        `has ${row.length} entries, earlier tokens have ${K}`,
        "give every token the same K (pad with -1)",
      );
    }
    for (let k = 0; k < row.length; k++) {
      const x = row[k];
      // Ids must fit int32 as they are: Int32Array.from would wrap 2^32 + 3 to 3
      // and 1e300 to 0 without a word.
      if (typeof x !== "number" || (ints && !(Number.isInteger(x) && (x | 0) === x))) {
        loadError(
          `${field}[${t}][${k}]`,
          `rank ${rank} token ${t} slot ${k} must be ${
            ints ? "an integer id in int32 range [-2147483648, 2147483647]" : "a number"
          }, got ${show(x)}`,
          ints ? "use integer expert ids, -1 for none" : "use numeric weights",
          rank,
        );
      }
      data.push(x);
    }
  }
  return { data, K };
}

/**
 * Load routing from JSON text or an already-parsed value. Accepted forms:
 * - `{"ranks": [{"topkIdx": [[e, …K], …T], "topkWeights": [[w, …K], …T]}, …]}`
 * - the `ranks` array alone;
 * - `{"topkIdx": [[[e, …K], …T], …ranks], "topkWeights": […same shape]}`.
 * `topkWeights` may be left out: each token's routed slots then get equal
 * weights. Every id must be an integer in int32 range (no silent wrap);
 * expert ranges and weights are checked later by the engine
 * (lib/core/input_check.ts); this checks structure.
 *
 * @throws {WeftError} naming the JSON path of the first malformed entry.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadRoutingJSON } from "./routing_load.ts";
 * const r = loadRoutingJSON('{"ranks": [{"topkIdx": [[0, 3], [1, -1]]}]}');
 * assert.ok(r[0].topkWeights[2] === 1 && r[0].topkIdx[3] === -1);
 * ```
 */
export function loadRoutingJSON(src: string | unknown): RankRouting[] {
  let v: unknown = src;
  if (typeof src === "string") {
    try {
      v = JSON.parse(src);
    } catch (cause) {
      throw new WeftError({
        field: "routing",
        problem: `is not valid JSON: ${(cause as Error).message}`,
        fix: "check the file",
        cause,
      });
    }
  }
  let ranks: { topkIdx: unknown; topkWeights?: unknown }[];
  if (Array.isArray(v)) ranks = v;
  else if (v !== null && typeof v === "object" && Array.isArray((v as { ranks?: unknown }).ranks)) {
    ranks = (v as { ranks: typeof ranks }).ranks;
  } else if (
    v !== null && typeof v === "object" && Array.isArray((v as { topkIdx?: unknown }).topkIdx)
  ) {
    const o = v as { topkIdx: unknown[]; topkWeights?: unknown };
    if (
      o.topkWeights !== undefined &&
      (!Array.isArray(o.topkWeights) || o.topkWeights.length !== o.topkIdx.length)
    ) {
      loadError(
        "topkWeights",
        "must have one entry per rank, like topkIdx",
        "write weights of the same shape as topkIdx",
      );
    }
    ranks = o.topkIdx.map((idx, r) => ({
      topkIdx: idx,
      topkWeights: (o.topkWeights as unknown[] | undefined)?.[r],
    }));
  } else {
    loadError(
      "routing",
      "expected {ranks: [...]}, an array of ranks, or {topkIdx: [ranks][T][K]}",
      "see loadRoutingJSON's documentation",
    );
  }
  let K: number | undefined;
  return ranks.map((rank, r) => {
    const base = `ranks[${r}]`;
    if (rank === null || typeof rank !== "object") {
      loadError(base, "must be an object {topkIdx, topkWeights?}", "write one object per rank");
    }
    const idx = flatten2(rank.topkIdx, `${base}.topkIdx`, true, K, r);
    K = idx.K;
    const topkIdx = Int32Array.from(idx.data);
    if (rank.topkWeights === undefined) {
      return { topkIdx, topkWeights: equalWeights(topkIdx, K ?? 1) };
    }
    const w = flatten2(rank.topkWeights, `${base}.topkWeights`, false, K, r);
    if (w.data.length !== idx.data.length) {
      loadError(
        `${base}.topkWeights`,
        `has ${w.data.length} entries, topkIdx has ${idx.data.length}`,
        "write one weight per id",
      );
    }
    return { topkIdx, topkWeights: Float32Array.from(w.data) };
  });
}

/**
 * Load routing from `.npy` files. `idx` is int32 or int64 (little-endian, C
 * order) of shape `[ranks, T, K]` (one slice per rank) or `[T, K]` (split
 * into `world` contiguous blocks: rank r gets tokens ⌊r·T/W⌋ … ⌊(r+1)·T/W⌋−1).
 * `weights`, when given, is float32/float64 of the same shape; otherwise each
 * token's routed slots get equal weights.
 *
 * @throws {WeftError} for malformed files, wrong shapes, int64 ids outside
 *   int32, or weights whose shape differs.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadRoutingNpy } from "./routing_load.ts";
 * import { encodeNpy } from "./npy.ts";
 * const r = loadRoutingNpy(encodeNpy(Int32Array.of(0, 1, 2, 3), [2, 2]), { world: 2 });
 * assert.ok(r.length === 2 && r[1].topkIdx.join() === "2,3");
 * ```
 */
export function loadRoutingNpy(
  idx: Uint8Array,
  opts: { readonly world?: number; readonly weights?: Uint8Array } = {},
): RankRouting[] {
  const a = parseNpy(idx, "topkIdx.npy");
  if (a.descr !== "<i4" && a.descr !== "<i8") {
    loadError(
      "topkIdx.npy",
      `has dtype '${a.descr}', expected int32 or int64`,
      "save the ids with arr.astype('<i4')",
    );
  }
  if (a.shape.length !== 2 && a.shape.length !== 3) {
    loadError(
      "topkIdx.npy",
      `has shape (${a.shape.join(", ")}), expected [ranks, T, K] or [T, K]`,
      "reshape before saving",
    );
  }
  let ids: Int32Array;
  if (a.data instanceof BigInt64Array) {
    ids = new Int32Array(a.data.length);
    for (let i = 0; i < ids.length; i++) {
      const v = a.data[i];
      if (v < -2147483648n || v > 2147483647n) {
        loadError(
          "topkIdx.npy",
          `entry ${i} is ${v}, outside int32`,
          "expert ids must fit in int32",
        );
      }
      ids[i] = Number(v);
    }
  } else ids = a.data as Int32Array;
  let w: Float32Array | undefined;
  if (opts.weights !== undefined) {
    const b = parseNpy(opts.weights, "topkWeights.npy");
    if (b.descr !== "<f4" && b.descr !== "<f8") {
      loadError(
        "topkWeights.npy",
        `has dtype '${b.descr}', expected float32 or float64`,
        "save the weights with arr.astype('<f4')",
      );
    }
    if (b.shape.join() !== a.shape.join()) {
      loadError(
        "topkWeights.npy",
        `has shape (${b.shape.join(", ")}), topkIdx.npy has (${a.shape.join(", ")})`,
        "save weights of the same shape as the ids",
      );
    }
    w = b.data instanceof Float32Array ? b.data : Float32Array.from(b.data as Float64Array);
  }
  const K = a.shape[a.shape.length - 1];
  let bounds: number[];
  if (a.shape.length === 3) {
    const [R, T] = a.shape;
    if (opts.world !== undefined && opts.world !== R) {
      loadError(
        "topkIdx.npy",
        `holds ${R} ranks, world is ${opts.world}`,
        `save [${opts.world}, T, K], or [T, K] to split it`,
      );
    }
    bounds = Array.from({ length: R + 1 }, (_, r) => r * T);
  } else {
    const W = opts.world ?? 1;
    if (!Number.isInteger(W) || W < 1) {
      loadError("world", `must be an integer ≥ 1, got ${show(W)}`, "pass the world size");
    }
    const T = a.shape[0];
    bounds = Array.from({ length: W + 1 }, (_, r) => Math.floor((r * T) / W));
  }
  return bounds.slice(0, -1).map((t0, r) => {
    const topkIdx = ids.slice(t0 * K, bounds[r + 1] * K);
    const topkWeights = w ? w.slice(t0 * K, bounds[r + 1] * K) : equalWeights(topkIdx, K);
    return { topkIdx, topkWeights };
  });
}
