/**
 * The hierarchical (dedupe `node`) protocol executed stage by stage on the
 * CPU, as the multi-node GPU engine runs it (the protocol note,
 * native/HIER_PROTOCOL.md). Dispatch:
 *   0. route: each source resolves its pairs to slots and ordinals, counts
 *      per slot, lists its tokens bound for each remote node, and flags bad
 *      input instead of throwing (protocol_route.ts);
 *   1. exchange: all ranks gather {T, flag, counts, node row counts}; one
 *      flag fails every rank, before any row moves; every rank derives the
 *      same forwarder table from the node row counts (the plan's `balance`,
 *      dsl/balance.ts);
 *   2. bases: every rank derives the same receive rows from the counts;
 *   3. pack: per remote node, each source's rows (payload + meta) in token
 *      order (protocol_dispatch.ts);
 *   4. slices: the source → forwarder streams move C rows per step
 *      (slices.ts) into the forwarders' staging;
 *   5. fan-out: the forwarder's node writes each arrived row into its
 *      receive rows; own-node rows are read straight from the source.
 * Combine (protocol_combine.ts): device partials, rounded to the wire dtype
 * when they cross ranks; forwarder reduce; the return path, sliced; the
 * home sum in ascending rank. Dispatch outputs equal the one-hop
 * Simulator's bit for bit, and so does combine with an f32 wire.
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import type { RankRouting } from "../core/engine_api.ts";
import type { SourceRows } from "./inputs.ts";
import type { ExpertRows } from "./combine_math.ts";
import {
  type Bases,
  bases,
  exchange,
  type Exchanged,
  route,
  type SourceRoute,
} from "./protocol_route.ts";
import { type DispatchRun, runDispatch, type Staging } from "./protocol_dispatch.ts";
import { type CombineRun, runCombine } from "./protocol_combine.ts";

/** One batch's protocol state: what the ranks keep between layout, dispatch and combine. */
export interface StagedBatch {
  /** Stage 0, per source. */
  readonly routes: readonly SourceRoute[];
  /** Stage 1. */
  readonly exchanged: Exchanged;
  /** Stage 2. */
  readonly bases: Bases;
  /** Every forwarder's staged meta (no payload): what its combine reduce follows. */
  readonly staging: readonly Staging[];
}

/**
 * The layout step: route every source, exchange, derive the bases, and move
 * the meta (no rows) to the forwarders.
 *
 * @throws {WeftError} the first flagged source's `topkIdx`/`topkWeights` error.
 */
export function stagedLayout(
  plan: PlanSpec,
  routing: readonly RankRouting[],
  tokens: readonly number[],
  sliceRows: number,
): StagedBatch {
  const routes = routing.map((r, s) => route(plan, s, r.topkIdx, r.topkWeights, tokens[s]));
  const exchanged = exchange(plan, routes);
  const b = bases(plan, exchanged);
  const { staging } = runDispatch(plan, routes, exchanged, b, null, sliceRows);
  return { routes, exchanged, bases: b, staging };
}

/** Dispatch rows through a batch's protocol state: pack, slices, staging, fan-out. */
export function stagedDispatch(
  plan: PlanSpec,
  batch: StagedBatch,
  xs: readonly SourceRows[],
  sliceRows: number,
): DispatchRun {
  return runDispatch(plan, batch.routes, batch.exchanged, batch.bases, xs, sliceRows);
}

/** Combine expert outputs through the forwarders, partials crossing ranks in `wire`. */
export function stagedCombine(
  plan: PlanSpec,
  batch: StagedBatch,
  ys: ExpertRows,
  wire: DType,
  sliceRows: number,
): CombineRun {
  const { routes, exchanged, bases: b, staging } = batch;
  return runCombine(plan, routes, exchanged, b, staging, ys, wire, sliceRows);
}
