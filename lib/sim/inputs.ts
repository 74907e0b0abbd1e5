/**
 * Reading a collective call's inputs to the host for the Simulator: one
 * entry per rank, every rank checked before any is read, and what a tensor
 * reads back checked against the shape it advertised.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import type {
  HostArray,
  HostRows,
  QuantizedInput,
  RankRouting,
  RoutingInput,
  Tensor,
} from "../core/engine_api.ts";
import type { QuantizedRows } from "../core/fp8.ts";
import { HostTensor } from "../core/host_tensor.ts";
import {
  checkInputRows,
  checkRankInput,
  checkRows,
  isQuantizedInput,
} from "../core/input_check.ts";
import { WeftError } from "../../dsl/errors.ts";

/** Rows given to dispatch: in the plan's dtype, or pre-quantized. */
export type SourceRows = HostRows | QuantizedRows;

/** One entry per rank, or a WeftError naming `field`. */
function checkCount(plan: PlanSpec, field: string, xs: readonly unknown[]): void {
  const W = plan.world;
  if (!Array.isArray(xs) || xs.length !== W) {
    throw new WeftError({
      field,
      problem: `expected one entry per rank (${W}), got ${
        Array.isArray(xs) ? xs.length : typeof xs
      }`,
      fix: `pass ${W} row arrays or tensors in rank order`,
    });
  }
}

/**
 * Every rank's routing on the host: arrays as they are, tensors read (all
 * ranks' shapes were checked before). With `checkValues`, what a tensor
 * read back is checked like arrays are, values included, against the token
 * count it advertised, for every rank before any work; without, the caller
 * checks the values itself (the staged protocol's route stage does).
 */
export async function readRouting(
  plan: PlanSpec,
  routing: readonly RoutingInput[],
  tokens: readonly number[],
  checkValues = true,
): Promise<RankRouting[]> {
  const host = await Promise.all(routing.map(async (r) => ({
    topkIdx: ArrayBuffer.isView(r.topkIdx) ? r.topkIdx : await r.topkIdx.read(),
    topkWeights: ArrayBuffer.isView(r.topkWeights) ? r.topkWeights : await r.topkWeights.read(),
  })));
  if (checkValues) {
    host.forEach((h, rank) => {
      const given = routing[rank];
      if (h.topkIdx !== given.topkIdx || h.topkWeights !== given.topkWeights) {
        checkRankInput(plan, rank, h, tokens[rank]);
      }
    });
  }
  return host;
}

/**
 * Combine's rows for every rank: count, dtype, width and row count of all
 * ranks checked first, then read; `rows` null means the counts were
 * already checked by the caller.
 */
export async function readRows(
  plan: PlanSpec,
  field: string,
  xs: readonly (HostRows | Tensor)[],
  rows: readonly number[] | null,
): Promise<HostRows[]> {
  checkCount(plan, field, xs);
  const counts = xs.map((x, r) => checkRows(plan, r, field, x, rows?.[r]));
  const data = await Promise.all(xs.map(hostData));
  // A device tensor's host copy must agree with the shape it advertised.
  data.forEach((d, r) => checkRows(plan, r, field, d, counts[r]));
  // Checked above: each is rows of the plan's dtype.
  return data as HostRows[];
}

/**
 * Dispatch's rows for every rank, checked for all ranks before any is
 * read: rows in the dtype, or pre-quantized `{ q, scales }`.
 */
export async function readInputs(
  plan: PlanSpec,
  field: string,
  xs: readonly (HostRows | Tensor | QuantizedInput)[],
  rows: readonly number[] | null,
): Promise<SourceRows[]> {
  checkCount(plan, field, xs);
  const counts = xs.map((x, r) => checkInputRows(plan, r, field, x, rows?.[r]));
  const data = await Promise.all(
    xs.map(async (x): Promise<HostArray | QuantizedRows> =>
      isQuantizedInput(x)
        ? {
          q: await hostData(x.q) as Uint8Array,
          scales: await hostData(x.scales) as Float32Array,
        }
        : await hostData(x)
    ),
  );
  data.forEach((d, r) => checkInputRows(plan, r, field, d, counts[r]));
  // Checked above: rows of the plan's dtype, or quantized rows.
  return data as SourceRows[];
}

/**
 * Host data of rows: a HostTensor's storage or a typed array as they are, a
 * device tensor read back. A tensor may hold any dtype: callers check what
 * came back.
 */
function hostData(x: HostRows | Tensor): Promise<HostArray> {
  if (x instanceof HostTensor) return Promise.resolve(x.data);
  return ArrayBuffer.isView(x) ? Promise.resolve(x) : x.read();
}
