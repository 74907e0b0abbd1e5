/**
 * Decode mode on the GPU against its CPU oracle (lib/sim/decode.ts): each
 * case captures dispatch → identity expert → combine once and replays it
 * with new random routing and a new token count per step (rows never zero,
 * outputs poisoned before each step), comparing every step's padded layout
 * bit for bit and combine bit for bit (f32 wire or f32 rows) or within the
 * dtype's rounding. Some steps overflow an expert on purpose, or carry a bad
 * expert id on the last rank, or a token count past the capacity written on
 * the device: `check()` must throw on every rank and the next step must be
 * right again. One step runs uncaptured (dispatch, combine).
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import { experts } from "../../dsl/mod.ts";
import { WeftError } from "../../dsl/errors.ts";
import type { DispatchResult, HostRows, RankInput } from "../../lib/core/engine_api.ts";
import { toF32 } from "../../lib/core/dtype.ts";
import { mulberry32 } from "../../lib/io/routing.ts";
import type { Communicator } from "../../lib/dist/communicator.ts";
import { DecodeEngine } from "../../lib/gpu/decode.ts";
import { type DecodeSimDispatched, DecodeSimulator } from "../../lib/sim/decode.ts";
import { randomRows } from "./case_data.ts";
import { bits, combineError, combineScale, firstDiff, unitRoundoff } from "./checks.ts";

/** One decode case. */
export interface DecodeCase {
  readonly name: string;
  readonly experts: number;
  readonly topK: number;
  readonly dtype: DType;
  readonly hidden: number;
  /** Tokens per rank per step. */
  readonly capacity: number;
  /** Rows per local expert as a fraction of world × capacity (1: never overflows). */
  readonly expertShare: number;
  readonly combineWire: "dtype" | "f32";
  readonly replays: number;
  /** Steps that route every token to expert 0 at full capacity (overflow unless expertShare is 1). */
  readonly overflowSteps: readonly number[];
  /** Steps where the last rank sends an out-of-range expert id. */
  readonly badSteps: readonly number[];
  readonly seed: number;
}

/** The decode cases of a one-node world. */
export function decodeCases(_world: number): DecodeCase[] {
  return [
    {
      name: "decode-bf16-h7168-top8-f32wire",
      experts: 64,
      topK: 8,
      dtype: "bf16",
      hidden: 7168,
      capacity: 32,
      expertShare: 1,
      combineWire: "f32",
      replays: 24,
      overflowSteps: [],
      badSteps: [7],
      seed: 11,
    },
    {
      name: "decode-bf16-h256-tight-overflow",
      experts: 16,
      topK: 4,
      dtype: "bf16",
      hidden: 256,
      capacity: 16,
      expertShare: 0.5,
      combineWire: "dtype",
      replays: 24,
      overflowSteps: [5, 6],
      badSteps: [12],
      seed: 23,
    },
    {
      name: "decode-f32-h64-top2",
      experts: 8,
      topK: 2,
      dtype: "f32",
      hidden: 64,
      capacity: 8,
      expertShare: 1,
      combineWire: "dtype",
      replays: 20,
      overflowSteps: [3], // at the default capacity the worst case fits: no error
      badSteps: [9],
      seed: 37,
    },
  ];
}

function planOf(c: DecodeCase, world: number): PlanSpec {
  return experts(c.experts).byDevice().topK(c.topK).dtype(c.dtype).hidden(c.hidden)
    .compile({ world });
}

function optionsOf(c: DecodeCase, world: number) {
  return {
    capacity: c.capacity,
    expertCapacity: Math.max(1, Math.ceil(world * c.capacity * c.expertShare)),
    combineWire: c.combineWire,
  };
}

/** The heap the decode cases need on `rank` (the largest case). */
export function decodeHeapBytes(world: number, rank: number): number {
  return Math.max(
    ...decodeCases(world).map((c) =>
      DecodeEngine.footprint(planOf(c, world), optionsOf(c, world), rank).heapBytes
    ),
  );
}

/** Every rank's input of step `s` (the same on every rank: each runs the oracle for all). */
function stepInputs(c: DecodeCase, plan: PlanSpec, s: number): RankInput[] {
  const rng = mulberry32(c.seed * 1_000_003 + s * 7919);
  const { topK: K, experts: E, hidden: H } = plan;
  const full = c.overflowSteps.includes(s) || c.badSteps.includes(s) || s === 0;
  return Array.from({ length: plan.world }, (_, r) => {
    const T = full ? c.capacity : s === 1 && r === 0 ? 0 : Math.floor(rng() * (c.capacity + 1));
    const topkIdx = new Int32Array(T * K).fill(-1);
    for (let t = 0; t < T; t++) {
      const pool = Array.from({ length: E }, (_, e) => e);
      for (let k = 0; k < K; k++) {
        if (c.overflowSteps.includes(s) && k === 0) {
          topkIdx[t * K] = pool.splice(0, 1)[0]; // expert 0
          continue;
        }
        if (rng() < 0.1) continue;
        topkIdx[t * K + k] = pool.splice(Math.floor(rng() * pool.length), 1)[0];
      }
    }
    const topkWeights = Float32Array.from({ length: T * K }, () => 0.1 + rng());
    return { x: randomRows(rng, T * H, plan.dtype), topkIdx, topkWeights };
  });
}

/** What differs between the GPU's step and the oracle's, or "". */
async function compareStep(
  dec: DecodeEngine,
  want: DecodeSimDispatched,
  rank: number,
): Promise<string> {
  const w = want.results[rank];
  const counts = await dec.expertCounts.read();
  if (firstDiff(counts, w.expertCounts) >= 0) return `counts ${counts} want ${w.expertCounts}`;
  const H = dec.plan.hidden, C = dec.expertCapacity;
  const recv = await dec.recv.read() as HostRows;
  const [weights, srcRank, srcToken, srcK] = [
    await dec.recvWeights.read(),
    await dec.srcRank.read(),
    await dec.srcToken.read(),
    await dec.srcK.read(),
  ];
  if (firstDiff(bits(weights), bits(w.recvWeights)) >= 0) return "recvWeights differ";
  if (firstDiff(srcRank, w.srcRank) >= 0) return "srcRank differs";
  if (firstDiff(srcToken, w.srcToken) >= 0) return "srcToken differs";
  if (firstDiff(srcK, w.srcK) >= 0) return "srcK differs";
  for (let l = 0; l < counts.length; l++) {
    const a = l * C * H, b = (l * C + counts[l]) * H;
    const i = firstDiff(bits(recv.subarray(a, b)), bits((w.recv.data as HostRows).subarray(a, b)));
    if (i >= 0) return `recv differs at local expert ${l}, element ${i}`;
  }
  return "";
}

/** Runs one decode case on this rank. */
export async function runDecodeCase(
  comm: Communicator,
  c: DecodeCase,
): Promise<{ name: string; pass: boolean; maxErr: number; detail: string }> {
  const world = comm.world, rank = comm.rank;
  const plan = planOf(c, world);
  const options = optionsOf(c, world);
  using dec = await DecodeEngine.create(plan, comm, options);
  using sim = new DecodeSimulator(plan, {
    maxTokens: c.capacity,
    expertCapacity: options.expertCapacity,
  });
  const graph = dec.capture();
  const bitwise = c.combineWire === "f32" || c.dtype === "f32";
  const bound = bitwise ? 0 : 3 * unitRoundoff(c.dtype);
  let maxErr = 0;
  const problems: string[] = [];
  let expectedErrors = 0, thrown = 0;
  for (let s = 0; s < c.replays; s++) {
    const inputs = stepInputs(c, plan, s);
    const bad = c.badSteps.includes(s) && (inputs[world - 1].topkIdx as Int32Array).length > 0;
    if (bad) (inputs[world - 1].topkIdx as Int32Array)[0] = plan.experts;
    const mine = inputs[rank];
    // NaN rows and weights; sources 0x55555555 (not the padding's -1).
    for (const t of [dec.out, dec.recvWeights]) t.poison(0xff);
    for (const t of [dec.srcRank, dec.srcToken, dec.srcK]) t.poison(0x55);
    dec.stage({
      x: mine.x as HostRows,
      topkIdx: mine.topkIdx as Int32Array,
      topkWeights: mine.topkWeights as Float32Array,
    });
    // The second-to-last step's token count, written on the device past the
    // capacity (the host-side stage() refuses it): caught on the device.
    const tooMany = s === c.replays - 2;
    if (tooMany) dec.tokens.write(Int32Array.of(c.capacity + 1));
    if (s === 2) {
      dec.dispatch(); // the uncaptured path, same results
      dec.combine();
    } else {
      dec.replay(graph);
    }
    const want = bad || tooMany ? undefined : await sim.dispatch(inputs);
    const overflow = want !== undefined && want.overflow.length > 0;
    let error: unknown = undefined;
    await dec.check().catch((e) => (error = e));
    if (bad || tooMany || overflow) {
      expectedErrors++;
      const field = bad || tooMany ? "topkIdx" : "expertCapacity";
      if (error instanceof WeftError && error.field === field) thrown++;
      else problems.push(`step ${s}: expected a WeftError on ${field}, got ${String(error)}`);
      continue;
    }
    if (error !== undefined) {
      problems.push(`step ${s}: ${String(error)}`);
      continue;
    }
    const diff = await compareStep(dec, want!, rank);
    if (diff !== "") problems.push(`step ${s}: ${diff}`);
    const ref = (await sim.combine(want!, want!.results.map((r) => r.recv.data as HostRows)))[rank];
    const T = ref.rows, H = plan.hidden;
    const got = (await dec.out.read() as HostRows).subarray(0, T * H);
    if (bitwise) {
      const i = firstDiff(bits(got), bits(ref.data as HostRows));
      if (i >= 0) problems.push(`step ${s}: combine differs at element ${i}`);
    } else {
      // Multi-term partials cross rounded to the dtype: within one rounding
      // of Σ|w·y| each, plus the final rounding.
      const ys = want!.results.map((r) => r.recv.data as HostRows);
      const scale = combineScale(plan, rank, T, want!.results as unknown as DispatchResult[], ys);
      const e = combineError(
        toF32(got, plan.dtype),
        toF32(ref.data as HostRows, plan.dtype),
        scale,
        bound,
      );
      maxErr = Math.max(maxErr, e.maxErr);
      if (e.problem !== "") problems.push(`step ${s}: combine beyond rounding: ${e.problem}`);
    }
    if (problems.length > 3) break;
  }
  return {
    name: c.name,
    pass: problems.length === 0 && thrown === expectedErrors,
    maxErr,
    detail:
      `replays=${c.replays} C=${dec.expertCapacity} errorsThrown=${thrown}/${expectedErrors} ` +
      `footprint=${dec.footprint.totalBytes}B ${problems.slice(0, 3).join(" ; ")}`.trimEnd(),
  };
}
