/**
 * The GPU engine's test cases, run by every rank of tests/gpu/worker.ts.
 *
 * Each rank regenerates every rank's inputs from the case's seed, so it can
 * run the CPU Simulator over the whole world locally and check its own GPU
 * results against that oracle: dispatch bit for bit, combine within the
 * dtype's rounding, and two GPU runs bit for bit against each other. Data is
 * random and never zero; outputs are poisoned (0xFF bytes, NaN in every
 * dtype) before the GPU writes them, so an element it skips shows up.
 *
 * @module
 */
import type { DType, PatternSpec, PlanSpec } from "../../dsl/types.ts";
import { Plan } from "../../dsl/mod.ts";
import type {
  DispatchResult,
  HostRows,
  RankInput,
  RankRouting,
  RoutingInput,
} from "../../lib/core/engine_api.ts";
import { fromF32, toF32 } from "../../lib/core/dtype.ts";
import { QUANT_BLOCK, quantizeRows } from "../../lib/core/fp8.ts";
import { mulberry32 } from "../../lib/io/routing.ts";
import { Simulator } from "../../lib/sim/simulator.ts";
import { WeftError } from "../../dsl/errors.ts";
import { isQuantizedInput } from "../../lib/core/input_check.ts";
import type { Communicator } from "../../lib/dist/communicator.ts";
import { DeviceTensor } from "../../lib/gpu/device_tensor.ts";
import { Engine } from "../../lib/gpu/engine.ts";

/** How a case routes tokens to experts. */
export type Routing =
  /** K distinct experts per token, uniformly. */
  | "uniform"
  /** Uniform, then ~30% of slots -1 and every 5th token with no expert at all. */
  | "empty-slots"
  /** Every token to the same expert in slot 0, the other slots -1. */
  | "one-expert";

/** One test case. */
export interface GpuCase {
  readonly name: string;
  /** A complete pattern: expert count and hidden size included. */
  readonly pattern: PatternSpec & { readonly experts: number; readonly hidden: number };
  /** Tokens of rank r: tokens[r mod length]. */
  readonly tokens: readonly number[];
  readonly routing: Routing;
  readonly seed: number;
  readonly maxTokens?: number;
  readonly combineWire?: "dtype" | "f32";
  /** Pass x and y as DeviceTensors instead of host arrays. */
  readonly onDevice?: boolean;
  /** Write x in place into the engine's heap (Engine.inputRows): no staging copy. */
  readonly inPlace?: boolean;
  /**
   * Pass each rank's routing as tensors on its GPU (topkIdx an i32
   * DeviceTensor, topkWeights an f32 one), as a router on the GPU leaves
   * it: dispatch and layout must read them where they are. With `failure:
   * "bad-expert"`, the bad id is in the device tensor too.
   */
  readonly routingOnDevice?: boolean;
  /**
   * Pass x pre-quantized ({ q, scales }, quantizing patterns only), with
   * scales that are not powers of two: dispatch must move them bit for bit.
   */
  readonly preQuantized?: boolean;
  /**
   * A batch that must fail on every rank, leaving earlier outputs untouched
   * and the engine usable: an out-of-range expert id on the last rank, or
   * more tokens than maxTokens on rank 0.
   */
  readonly failure?: "bad-expert" | "over-capacity" | "bad-combine";
}

/** One rank's input with its routing in host arrays, as the cases generate it. */
export type HostInput = RankInput & RankRouting;

/** What one rank saw for one case. */
export interface CaseOutcome {
  readonly name: string;
  readonly pass: boolean;
  /** Largest combine error relative to Σ|w·y| of the element (0 when exact). */
  readonly maxErr: number;
  readonly detail: string;
}

const base = {
  dedupe: "device",
  receive: "expert-major",
  combine: "weighted",
} as const;

/**
 * The cases for a world of `world` ranks in nodes of `gpusPerNode`.
 *
 * @example
 * ```ts
 * import { gpuCases } from "./cases.ts";
 * console.assert(gpuCases(4, 4).some((c) => c.pattern.hidden === 7168));
 * ```
 */
export function gpuCases(world: number, gpusPerNode: number): GpuCase[] {
  // A table where, from 3 ranks on, the last rank owns no expert at all.
  const owners = Array.from(
    { length: 32 },
    (_, e) => (e * 5 + 1) % (world > 2 ? world - 1 : world),
  );
  const list: GpuCase[] = [
    {
      name: "deepseek-bf16-h7168-uneven-tokens",
      pattern: {
        ...base,
        experts: 256,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "bf16",
        hidden: 7168,
      },
      tokens: [300, 1, 0, 129],
      routing: "uniform",
      seed: 1,
    },
    {
      name: "f16-h4096-roundRobin-rank-major-sum-dedupe-none",
      pattern: {
        experts: 64,
        placement: { kind: "roundRobin" },
        topK: 6,
        dtype: "f16",
        hidden: 4096,
        dedupe: "none",
        receive: "rank-major",
        combine: "sum",
      },
      tokens: [97, 250, 3, 0],
      routing: "uniform",
      seed: 2,
    },
    {
      name: "f32-h2048-table-rank-without-experts",
      pattern: {
        ...base,
        experts: 32,
        placement: { kind: "table", owners },
        topK: 4,
        dtype: "f32",
        hidden: 2048,
      },
      tokens: [65, 33, 129, 17],
      routing: "uniform",
      seed: 3,
    },
    {
      name: "one-token-per-rank-f32-h4096",
      pattern: {
        ...base,
        experts: 16,
        placement: { kind: "byDevice" },
        topK: 2,
        dtype: "f32",
        hidden: 4096,
      },
      tokens: [1],
      routing: "uniform",
      seed: 4,
    },
    {
      name: "every-token-to-one-expert-bf16-dedupe-none",
      pattern: {
        ...base,
        dedupe: "none",
        experts: 256,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "bf16",
        hidden: 2048,
      },
      tokens: [77, 130, 0, 5],
      routing: "one-expert",
      seed: 5,
    },
    {
      name: "empty-slots-bf16-h1000-sum",
      pattern: {
        ...base,
        combine: "sum",
        experts: 128,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "bf16",
        hidden: 1000,
      },
      tokens: [64, 65, 0, 31],
      routing: "empty-slots",
      seed: 6,
    },
    {
      name: "some-ranks-zero-tokens-f16-h2048",
      pattern: {
        ...base,
        experts: 64,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "f16",
        hidden: 2048,
      },
      tokens: [0, 45],
      routing: "uniform",
      seed: 7,
    },
    {
      name: "device-tensor-inputs-bf16-h2048",
      pattern: {
        ...base,
        experts: 64,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "bf16",
        hidden: 2048,
      },
      tokens: [100, 37, 64, 3],
      routing: "uniform",
      seed: 8,
      onDevice: true,
    },
    {
      // Everything on the device, as in a model: x, y and the router's
      // top-k ids (i32) and weights (f32); a rank with no tokens passes
      // empty tensors.
      name: "routing-device-tensors-bf16-h2048",
      pattern: {
        ...base,
        experts: 64,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "bf16",
        hidden: 2048,
      },
      tokens: [96, 0, 41, 130],
      routing: "empty-slots",
      seed: 22,
      onDevice: true,
      routingOnDevice: true,
    },
    {
      name: "x-written-in-place-bf16-h2048",
      pattern: {
        ...base,
        experts: 32,
        placement: { kind: "byDevice" },
        topK: 4,
        dtype: "bf16",
        hidden: 2048,
      },
      tokens: [77, 128, 5, 64],
      routing: "uniform",
      seed: 14,
      inPlace: true,
    },
    {
      name: "combine-wire-f32-bf16-h4096",
      pattern: {
        ...base,
        experts: 64,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "bf16",
        hidden: 4096,
      },
      tokens: [90, 91, 92, 93],
      routing: "uniform",
      seed: 9,
      combineWire: "f32",
    },
    {
      name: "bad-expert-id-fails-every-rank",
      pattern: {
        ...base,
        experts: 64,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "bf16",
        hidden: 1000,
      },
      tokens: [20, 7, 13, 1],
      routing: "uniform",
      seed: 10,
      failure: "bad-expert",
    },
    {
      // The out-of-range id sits in the last rank's i32 device tensor: only
      // the device check can see it, and every rank must fail naming topkIdx.
      name: "bad-expert-id-in-device-routing-fails-every-rank",
      pattern: {
        ...base,
        experts: 64,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "bf16",
        hidden: 1000,
      },
      tokens: [11, 6, 19, 4],
      routing: "uniform",
      seed: 23,
      routingOnDevice: true,
      failure: "bad-expert",
    },
    {
      // The last rank passes y of the wrong shape: it throws at once; the
      // others' combine returns (its work queued) and its failure reaches
      // them at their next synchronization, naming the rank. The engine then
      // still works on every rank.
      name: "bad-combine-reported-by-every-rank",
      pattern: {
        ...base,
        experts: 32,
        placement: { kind: "byDevice" },
        topK: 4,
        dtype: "bf16",
        hidden: 1024,
      },
      tokens: [40, 33, 17, 25],
      routing: "uniform",
      seed: 15,
      failure: "bad-combine",
    },
    {
      name: "over-capacity-fails-every-rank",
      pattern: {
        ...base,
        experts: 64,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "f32",
        hidden: 1000,
      },
      tokens: [16, 3, 9, 16],
      routing: "uniform",
      seed: 11,
      maxTokens: 16,
      failure: "over-capacity",
    },
  ];
  // Quantized dispatch (E4M3 + block scales) of three cases above: the bytes
  // and the scales must match the Simulator's bit for bit. Their rows span
  // 2^±20 block to block (randomRows' spread), so the scales differ; dedupe
  // none takes the SM-load pull with 16-byte rows split into bytes + scales.
  const quantized = [
    "deepseek-bf16-h7168-uneven-tokens",
    "f16-h4096-roundRobin-rank-major-sum-dedupe-none",
    "x-written-in-place-bf16-h2048",
  ];
  for (const [i, name] of quantized.entries()) {
    const c = list.find((c) => c.name === name)!;
    list.push({
      ...c,
      name: `e4m3-${name}`,
      pattern: { ...c.pattern, quantize: "e4m3" },
      seed: 16 + i,
    });
  }
  // Rows quantized by the caller: from the host, from device tensors, and
  // written in place (Engine.inputQuantizedRows: no copy at all).
  const deepseek = list.find((c) => c.name === "deepseek-bf16-h7168-uneven-tokens")!;
  for (const [i, where] of (["host", "device", "in-place"] as const).entries()) {
    list.push({
      ...deepseek,
      name: `e4m3-prequantized-${where}-bf16-h7168`,
      pattern: { ...deepseek.pattern, quantize: "e4m3" },
      seed: 19 + i,
      preQuantized: true,
      onDevice: where === "device",
      inPlace: where === "in-place",
    });
  }
  if (world >= 2) {
    list.push({
      name: "replicas-bf16-h1000-rank-major",
      pattern: {
        ...base,
        receive: "rank-major",
        experts: 64,
        placement: { kind: "byDevice" },
        replicas: { experts: [0, 1, 2, 3, 40], copies: 2 },
        topK: 8,
        dtype: "bf16",
        hidden: 1000,
      },
      tokens: [120, 44, 0, 61],
      routing: "uniform",
      seed: 12,
    });
  }
  if (world / gpusPerNode > 1) {
    list.push({
      name: "dedupe-node-bf16-h2048",
      pattern: {
        ...base,
        dedupe: "node",
        experts: 64,
        placement: { kind: "byDevice" },
        topK: 8,
        dtype: "bf16",
        hidden: 2048,
      },
      tokens: [80, 33, 0, 57],
      routing: "uniform",
      seed: 13,
    });
  }
  return list;
}

/**
 * The plan of a case: the one adapter between these tests and the DSL, so a
 * change in the builder touches only this function.
 */
export function planFor(c: GpuCase, world: number, gpusPerNode: number): PlanSpec {
  return Plan.compile(c.pattern, { world, gpusPerNode });
}

/** Largest token count any rank passes in a case (the engine's maxTokens by default). */
export function caseMaxTokens(c: GpuCase, world: number): number {
  if (c.maxTokens !== undefined) return c.maxTokens;
  return Math.max(1, ...Array.from({ length: world }, (_, r) => tokensOf(c, r)));
}

function tokensOf(c: GpuCase, rank: number): number {
  return c.tokens[rank % c.tokens.length];
}

/**
 * Random nonzero values in ±[0.5, 2), rounded to `dtype`; with `spread`, each
 * run of 128 values scaled by its own 2^[-20, 20] (so block scales differ).
 */
export function randomRows(rng: () => number, n: number, dtype: DType, spread = false): HostRows {
  const f = new Float32Array(n);
  let scale = 1;
  for (let i = 0; i < n; i++) {
    if (spread && i % 128 === 0) scale = 2 ** (Math.floor(rng() * 41) - 20);
    f[i] = (rng() < 0.5 ? -1 : 1) * (0.5 + 1.5 * rng()) * scale;
  }
  return fromF32(f, dtype);
}

/** One rank's input for `tokens` tokens, from the case's seed. */
export function rankInput(plan: PlanSpec, c: GpuCase, rank: number, tokens: number): HostInput {
  const rng = mulberry32(c.seed * 7919 + rank * 104_729 + tokens);
  const { topK: K, experts: E, hidden: H } = plan;
  const topkIdx = new Int32Array(tokens * K).fill(-1);
  const topkWeights = new Float32Array(tokens * K);
  const pool = Array.from({ length: E }, (_, e) => e);
  for (let t = 0; t < tokens; t++) {
    if (c.routing === "one-expert") {
      topkIdx[t * K] = Math.floor(E * 0.78);
    } else {
      // Partial Fisher-Yates: K distinct experts.
      for (let k = 0; k < Math.min(K, E); k++) {
        const j = k + Math.floor(rng() * (E - k));
        [pool[k], pool[j]] = [pool[j], pool[k]];
        topkIdx[t * K + k] = pool[k];
      }
      if (c.routing === "empty-slots") {
        for (let k = 0; k < K; k++) if (t % 5 === 4 || rng() < 0.3) topkIdx[t * K + k] = -1;
      }
    }
    for (let k = 0; k < K; k++) topkWeights[t * K + k] = 0.05 + 0.95 * rng();
  }
  return {
    x: randomRows(rng, tokens * H, plan.dtype, plan.quantize !== undefined),
    topkIdx,
    topkWeights,
  };
}

/**
 * Every rank's input of a case's (good) batch; `tokensFor` gives rank r's
 * token count (the case's by default).
 */
export function caseInputs(
  plan: PlanSpec,
  c: GpuCase,
  tokensFor: (rank: number) => number = (r) => tokensOf(c, r),
): HostInput[] {
  const inputs = Array.from(
    { length: plan.world },
    (_, r) => rankInput(plan, c, r, tokensFor(r)),
  );
  if (!c.preQuantized) return inputs;
  // The caller's own quantization: weft's bytes, scales times 1.37 (no longer
  // powers of two), so only a bitwise move reproduces them.
  return inputs.map((input) => {
    const { q, scales } = quantizeRows(input.x as HostRows, plan.dtype, plan.hidden);
    return { ...input, x: { q, scales: scales.map((s) => s * 1.37) } };
  });
}

/** The bad batch of a failure case: the good one with one rank's input spoiled. */
export function failingInputs(
  plan: PlanSpec,
  c: GpuCase,
  good: readonly HostInput[],
): HostInput[] {
  const bad = [...good];
  if (c.failure === "bad-expert") {
    const r = plan.world - 1;
    const topkIdx = good[r].topkIdx.slice();
    const tokens = topkIdx.length / plan.topK;
    if (tokens === 0) return failingInputs(plan, { ...c, failure: "over-capacity" }, good);
    topkIdx[0] = plan.experts + 7;
    bad[r] = { ...good[r], topkIdx };
  } else {
    bad[0] = rankInput(plan, c, 0, caseMaxTokens(c, plan.world) + 1);
  }
  return bad;
}

/** Every rank's expert outputs y for a dispatch with these receive counts. */
export function caseYs(plan: PlanSpec, c: GpuCase, recvRows: readonly number[]): HostRows[] {
  return recvRows.map((rows, r) =>
    randomRows(mulberry32(c.seed * 31 + r * 7 + 5), rows * plan.hidden, plan.dtype)
  );
}

/** Unit roundoff of a dtype. */
function unitRoundoff(dtype: DType): number {
  return dtype === "bf16" ? 2 ** -8 : dtype === "f16" ? 2 ** -11 : 2 ** -24;
}

// ---------------------------------------------------------------- checks

function bits(rows: HostRows): Uint8Array | Uint16Array | Uint32Array {
  return rows instanceof Float32Array
    ? new Uint32Array(rows.buffer, rows.byteOffset, rows.length)
    : rows;
}

/** Index of the first difference, or -1. */
function firstDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Empty when `got` equals the oracle's dispatch result bit for bit; else what differs. */
export async function compareDispatch(got: DispatchResult, want: DispatchResult): Promise<string> {
  const problems: string[] = [];
  for (const field of ["expertCounts", "srcRank", "srcToken", "srcK"] as const) {
    const i = firstDiff(got[field], want[field]);
    if (i >= 0) {
      problems.push(
        `${field}[${i}] = ${got[field][i]}, want ${want[field][i]} (lengths ${got[field].length}/${
          want[field].length
        })`,
      );
    }
  }
  const w = firstDiff(bits(got.recvWeights), bits(want.recvWeights));
  if (w >= 0) {
    problems.push(`recvWeights[${w}] = ${got.recvWeights[w]}, want ${want.recvWeights[w]}`);
  }
  if (got.recv.rows !== want.recv.rows || got.recv.cols !== want.recv.cols) {
    problems.push(
      `recv is ${got.recv.rows}×${got.recv.cols}, want ${want.recv.rows}×${want.recv.cols}`,
    );
  } else {
    const r = firstDiff(bits(await got.recv.read()), bits(await want.recv.read()));
    if (r >= 0) {
      problems.push(
        `recv differs at row ${Math.floor(r / got.recv.cols)}, column ${r % got.recv.cols}`,
      );
    }
  }
  if ((got.recvScales === undefined) !== (want.recvScales === undefined)) {
    problems.push(`recvScales ${got.recvScales ? "present" : "absent"}, want the opposite`);
  } else if (got.recvScales !== undefined && want.recvScales !== undefined) {
    const s = firstDiff(bits(await got.recvScales.read()), bits(await want.recvScales.read()));
    if (s >= 0) {
      const cols = want.recvScales.cols;
      problems.push(`recvScales differ at row ${Math.floor(s / cols)}, block ${s % cols}`);
    }
  }
  return problems.join("; ");
}

/**
 * Σ_k |w|·|y| of every output element of rank `rank`, from the oracle's
 * receive metadata over all ranks: the scale the combine error is measured
 * against.
 */
function combineScale(
  plan: PlanSpec,
  rank: number,
  tokens: number,
  oracle: readonly DispatchResult[],
  ys: readonly HostRows[],
): Float64Array {
  const H = plan.hidden;
  const scale = new Float64Array(tokens * H);
  oracle.forEach((res, d) => {
    const y = toF32(ys[d], plan.dtype);
    for (let i = 0; i < res.srcRank.length; i++) {
      if (res.srcRank[i] !== rank) continue;
      const w = plan.combine === "weighted" ? Math.abs(res.recvWeights[i]) : 1;
      const t = res.srcToken[i];
      for (let h = 0; h < H; h++) scale[t * H + h] += w * Math.abs(y[i * H + h]);
    }
  });
  return scale;
}

/** Max relative error of `got` against `want`, and the first element over `bound`. */
function combineError(
  got: Float32Array,
  want: Float32Array,
  scale: Float64Array,
  bound: number,
): { maxErr: number; problem: string } {
  let maxErr = 0;
  let problem = "";
  for (let i = 0; i < want.length; i++) {
    const err = scale[i] === 0
      ? (got[i] === 0 && want[i] === 0 ? 0 : Infinity)
      : Math.abs(got[i] - want[i]) / scale[i];
    if (!(err <= bound) && problem === "") {
      problem = `element ${i}: got ${got[i]}, want ${want[i]} (scale ${scale[i]})`;
    }
    if (!(err <= maxErr)) maxErr = Number.isNaN(err) ? Infinity : err;
  }
  return { maxErr, problem };
}

// ---------------------------------------------------------------- running

/**
 * A rank's routing uploaded to its GPU, as a router there leaves it: ids as
 * an i32 [T × K] DeviceTensor, weights as an f32 one (closed by the caller,
 * from `temporaries`).
 */
function routingOnDevice(
  engine: Engine,
  plan: PlanSpec,
  input: RankRouting,
  temporaries: DeviceTensor[],
): { topkIdx: DeviceTensor<"i32">; topkWeights: DeviceTensor<"f32"> } {
  const T = input.topkIdx.length / plan.topK;
  const topkIdx = DeviceTensor.upload(engine.device, "i32", T, plan.topK, input.topkIdx);
  temporaries.push(topkIdx);
  const topkWeights = DeviceTensor.upload(engine.device, "f32", T, plan.topK, input.topkWeights);
  temporaries.push(topkWeights);
  return { topkIdx, topkWeights };
}

/** Runs one case on this rank (collective: every rank runs the same case). */
export async function runCase(
  comm: Communicator,
  c: GpuCase,
  gpusPerNode: number,
): Promise<CaseOutcome> {
  const outcome = (pass: boolean, maxErr: number, detail: string): CaseOutcome => ({
    name: c.name,
    pass,
    maxErr,
    detail,
  });
  const rank = comm.rank;
  const plan = planFor(c, comm.world, gpusPerNode);
  const inputs = caseInputs(plan, c);
  using sim = new Simulator(plan);
  const oracle = await sim.dispatch(inputs);
  using engine = await Engine.create(plan, comm, {
    maxTokens: caseMaxTokens(c, comm.world),
    ...(c.combineWire !== undefined ? { combineWire: c.combineWire } : {}),
  });
  const temporaries: DeviceTensor[] = [];
  const onSide = (rows: HostRows, n: number): HostRows | DeviceTensor => {
    if (!c.onDevice) return rows;
    const t = DeviceTensor.upload(engine.device, plan.dtype, n, plan.hidden, rows);
    temporaries.push(t);
    return t;
  };
  // Pre-quantized x: both parts on the device too, when the case says so.
  const xOnSide = (x: RankInput["x"], n: number): RankInput["x"] => {
    if (!isQuantizedInput(x)) return onSide(x as HostRows, n);
    if (!c.onDevice) return x;
    const q = DeviceTensor.upload(engine.device, "e4m3", n, plan.hidden, x.q as Uint8Array);
    const scales = DeviceTensor.upload(
      engine.device,
      "f32",
      n,
      plan.hidden / QUANT_BLOCK,
      x.scales as Float32Array,
    );
    temporaries.push(q, scales);
    return { q, scales };
  };
  try {
    const mine = inputs[rank];
    const tokens = mine.topkIdx.length / plan.topK;
    let x = xOnSide(mine.x, tokens);
    let routing: RoutingInput = c.routingOnDevice
      ? routingOnDevice(engine, plan, mine, temporaries)
      : { topkIdx: mine.topkIdx, topkWeights: mine.topkWeights };
    if (c.inPlace && isQuantizedInput(mine.x)) {
      const views = engine.inputQuantizedRows(tokens);
      views.q.write(mine.x.q as Uint8Array);
      views.scales.write(mine.x.scales as Float32Array);
      x = views;
    } else if (c.inPlace) {
      const rows = engine.inputRows(tokens);
      rows.write(mine.x as HostRows);
      x = rows;
      const staging = engine.inputRouting(tokens);
      staging.topkIdx.set(mine.topkIdx);
      staging.topkWeights.set(mine.topkWeights);
      routing = staging;
    }
    const first = await engine.dispatch([{ x, ...routing }]);
    const want = oracle.results[rank];
    const problems: string[] = [];
    const d1 = await compareDispatch(first.results[0], want);
    if (d1) problems.push(`dispatch: ${d1}`);

    if (c.failure !== undefined) {
      return outcome(
        ...await checkFailure(engine, plan, c, inputs, first, want, problems, temporaries),
      );
    }

    const second = await engine.dispatch([{ x, ...routing }]);
    const again = await compareDispatch(second.results[0], first.results[0]);
    if (again) problems.push(`second dispatch differs from the first: ${again}`);
    second.handle.close();

    // The layout step alone, then the rows through it, equals one dispatch
    // (from the device tensors, when the case's routing is there).
    const planned = await engine.layout([
      c.routingOnDevice ? routing : { topkIdx: mine.topkIdx, topkWeights: mine.topkWeights },
    ]);
    const plannedRecv = (await engine.redispatch(planned, [x])).results[0];
    const split = await compareDispatch(plannedRecv, want);
    if (split) problems.push(`layout + redispatch: ${split}`);
    planned.close();

    // Every row of the receive buffer must be rewritten by a re-dispatch.
    const recv = first.results[0].recv;
    if (recv instanceof DeviceTensor) recv.poison();
    const scales = first.results[0].recvScales;
    if (scales instanceof DeviceTensor) scales.poison();
    await engine.redispatch(first.handle, [x]);
    const re = await compareDispatch(first.results[0], want);
    if (re) problems.push(`redispatch into a poisoned buffer: ${re}`);

    const { maxErr, problem, out, y } = await checkCombine(
      engine,
      sim,
      plan,
      c,
      oracle,
      first.handle,
      tokens,
      onSide,
      temporaries,
    );
    if (problem) problems.push(problem);
    const [out2] = await engine.combine(first.handle, [y]);
    // A dispatch while that combine still runs on the GPU (its begin half
    // finds the tail in flight, settles it, then goes on).
    const third = await engine.dispatch([{ x, ...routing }]);
    const overlapped = await compareDispatch(third.results[0], want);
    if (overlapped) problems.push(`dispatch right after combine: ${overlapped}`);
    third.handle.close();
    const twice = firstDiff(bits(await out2.read()), bits(await out.read()));
    out2.close();
    if (twice >= 0) problems.push(`combine is not deterministic: runs differ at element ${twice}`);
    first.handle.close();
    oracle.handle.close();

    // A smaller batch with new inputs (routing and x uploaded afresh when
    // the case has them on the device) on the same engine: dispatch replays
    // launches captured once, so the token count, the routing, the index
    // arrays and recv must all be this call's, not an earlier call's.
    const half = caseInputs(plan, c, (r) => Math.floor(tokensOf(c, r) / 2));
    const halfOracle = await sim.dispatch(half);
    const mineHalf = half[rank];
    const tHalf = mineHalf.topkIdx.length / plan.topK;
    const halfRouting: RoutingInput = c.routingOnDevice
      ? routingOnDevice(engine, plan, mineHalf, temporaries)
      : { topkIdx: mineHalf.topkIdx, topkWeights: mineHalf.topkWeights };
    const smaller = await engine.dispatch([{ x: xOnSide(mineHalf.x, tHalf), ...halfRouting }]);
    const dHalf = await compareDispatch(smaller.results[0], halfOracle.results[rank]);
    if (dHalf) problems.push(`a smaller batch after these: ${dHalf}`);
    const halfCombine = await checkCombine(
      engine,
      sim,
      plan,
      c,
      halfOracle,
      smaller.handle,
      tHalf,
      onSide,
      temporaries,
    );
    if (halfCombine.problem) problems.push(`a smaller batch after these: ${halfCombine.problem}`);
    smaller.handle.close();
    halfOracle.handle.close();
    return outcome(problems.length === 0, maxErr, problems.join("; "));
  } finally {
    for (const t of temporaries) t.close();
  }
}

/**
 * Combines `handle`'s batch on the GPU into a poisoned output (the experts'
 * outputs from caseYs) and checks it against the Simulator's combine of the
 * same batch; returns the output (closed with `temporaries`) and y.
 */
async function checkCombine(
  engine: Engine,
  sim: Simulator,
  plan: PlanSpec,
  c: GpuCase,
  oracle: Awaited<ReturnType<Simulator["dispatch"]>>,
  handle: Awaited<ReturnType<Engine["dispatch"]>>["handle"],
  tokens: number,
  onSide: (rows: HostRows, n: number) => HostRows | DeviceTensor,
  temporaries: DeviceTensor[],
): Promise<
  { maxErr: number; problem: string; out: DeviceTensor<DType>; y: HostRows | DeviceTensor }
> {
  const rank = engine.rank;
  const recvRows = oracle.results.map((r) => r.recv.rows);
  const ys = caseYs(plan, c, recvRows);
  const wantOut = toF32(await (await sim.combine(oracle.handle, ys))[rank].read(), plan.dtype);
  const out = DeviceTensor.alloc(engine.device, plan.dtype, tokens, plan.hidden);
  temporaries.push(out);
  out.poison();
  const y = onSide(ys[rank], recvRows[rank]);
  await engine.combine(handle, [y], { out: [out] });
  const got = toF32(await out.read(), plan.dtype);
  const u = unitRoundoff(plan.dtype);
  // The default wire carries partials in the dtype (one more rounding each).
  const uWire = c.combineWire === "f32" ? 2 ** -24 : u;
  const bound = 2 * u + (plan.topK + 2) * Math.max(uWire, 2 ** -24);
  const { maxErr, problem } = combineError(
    got,
    wantOut,
    combineScale(plan, rank, tokens, oracle.results, ys),
    bound,
  );
  return {
    maxErr,
    problem: problem ? `combine beyond ${bound.toExponential(2)}: ${problem}` : "",
    out,
    y,
  };
}

/**
 * The failure cases: a bad batch must throw a WeftError on this rank (every
 * rank checks itself), leave the previous batch's buffer as it was, and the
 * next good batch must still be right.
 */
async function checkFailure(
  engine: Engine,
  plan: PlanSpec,
  c: GpuCase,
  inputs: readonly HostInput[],
  first: Awaited<ReturnType<Engine["dispatch"]>>,
  want: DispatchResult,
  problems: string[],
  temporaries: DeviceTensor[],
): Promise<[boolean, number, string]> {
  const rank = engine.rank;
  if (c.failure === "bad-combine") {
    return checkCombineFailure(engine, plan, inputs, first, want, problems);
  }
  const recv = first.results[0].recv as DeviceTensor<DType | "e4m3">;
  recv.poison();
  const bad = failingInputs(plan, c, inputs);
  const mine: RankInput = c.routingOnDevice
    ? { ...bad[rank], ...routingOnDevice(engine, plan, bad[rank], temporaries) }
    : bad[rank];
  // Device routing: every rank has tokens, so the bad id is the only fault.
  const fields = c.routingOnDevice ? ["topkIdx"] : ["topkIdx", "tokens"];
  try {
    const d = await engine.dispatch([mine]);
    d.handle.close();
    problems.push("the bad batch did not throw on this rank");
  } catch (error) {
    if (!(error instanceof WeftError)) {
      problems.push(`threw ${String(error)} instead of a WeftError`);
    } else if (!fields.includes(error.field)) {
      problems.push(`WeftError names "${error.field}": ${error.message}`);
    } else if (
      c.routingOnDevice && !new RegExp(`rank(\\(s\\))? ${plan.world - 1}\\b`).test(error.message)
    ) {
      // The bad rank says "… on rank N …", its peers "rank(s) N failed …".
      problems.push(`the WeftError does not name rank ${plan.world - 1}: ${error.message}`);
    }
  }
  const after = bits(await recv.read());
  if (after.some((v) => v !== (after instanceof Uint32Array ? 0xffffffff : 0xffff))) {
    problems.push("the bad batch wrote into an earlier batch's receive buffer");
  }
  first.handle.close();
  const next = await engine.dispatch([inputs[rank]]);
  const ok = await compareDispatch(next.results[0], want);
  if (ok) problems.push(`the engine is broken after the failure: ${ok}`);
  next.handle.close();
  return [problems.length === 0, 0, problems.join("; ")];
}

/**
 * A combine that one rank rejects on the host (y of the wrong shape): that
 * rank throws at once; every other rank learns it at its next
 * synchronization (the combine returned with its work queued), from a
 * WeftError that names the failing rank; afterwards dispatch and combine
 * still work everywhere.
 */
async function checkCombineFailure(
  engine: Engine,
  plan: PlanSpec,
  inputs: readonly HostInput[],
  first: Awaited<ReturnType<Engine["dispatch"]>>,
  want: DispatchResult,
  problems: string[],
): Promise<[boolean, number, string]> {
  const rank = engine.rank;
  const last = inputs.length - 1;
  const rows = first.results[0].recv.rows;
  const y = rank === last
    ? randomRows(() => 0.5, (rows + 1) * plan.hidden, plan.dtype) // one row too many
    : randomRows(() => 0.25, rows * plan.hidden, plan.dtype);
  try {
    const [out] = await engine.combine(first.handle, [y]);
    out.close();
    if (rank === last) problems.push("the bad combine did not throw on the rank that passed it");
    try {
      await engine.synchronize();
      problems.push("a peer's bad combine was not reported by synchronize()");
    } catch (error) {
      if (
        !(error instanceof WeftError) || !new RegExp(`rank\\(s\\) ${last}\\b`).test(error.message)
      ) {
        problems.push(
          `synchronize() threw something that does not name rank ${last}: ${String(error)}`,
        );
      }
    }
  } catch (error) {
    if (rank !== last) problems.push(`combine threw on a good rank: ${String(error)}`);
    else if (!(error instanceof WeftError) || error.field !== "ys") {
      problems.push(`the bad rank's error does not name ys: ${String(error)}`);
    }
  }
  first.handle.close();
  const next = await engine.dispatch([inputs[rank]]);
  const again = await compareDispatch(next.results[0], want);
  if (again) problems.push(`dispatch after the failed combine: ${again}`);
  const ys = randomRows(() => 0.125, next.results[0].recv.rows * plan.hidden, plan.dtype);
  const [out] = await engine.combine(next.handle, [ys]);
  await out.read();
  out.close();
  next.handle.close();
  return [problems.length === 0, 0, problems.join("; ")];
}
