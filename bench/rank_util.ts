/**
 * What every benchmark rank shares (bench/worker.ts, bench/nodes_worker.ts):
 * random inputs, the output check against x·Σw with identity experts, timed
 * runs on the communicator's stream, and gathering a value from every rank.
 *
 * @module
 */
import { TENSOR_DTYPE_BYTES } from "../dsl/types.ts";
import type { Communicator } from "../lib/dist/communicator.ts";
import type { DeviceTensor } from "../lib/gpu/device_tensor.ts";
import { bf16ToF32 } from "../lib/core/dtype.ts";
import { native } from "../lib/native/loader.ts";
import { unwrap } from "../lib/native/status.ts";
import type { RankRouting } from "../lib/io/routing.ts";
import type { StreamTimer } from "./baseline.ts";

/** Rows per rank compared against the expected output after timing. */
export const CHECK_ROWS = 64;
/** bf16 output of Σ_k w·x with Σ_k w = 1: a few bf16 ulps at most. */
export const CHECK_TOLERANCE = 1e-2;

/**
 * Random bf16 rows, never zero, never NaN: sign and 7 mantissa bits random,
 * exponent in [2⁻⁷, 2¹), so every value is a normal number of modest size
 * (zeros would hide unwritten output and can run faster than real data).
 */
export function randomBf16(count: number, seed: number): Uint16Array {
  const out = new Uint16Array(count);
  let s = (seed * 0x9e3779b1 + 0x7f4a7c15) >>> 0 || 1;
  for (let i = 0; i < count; i += 2) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const r = s >>> 0;
    out[i] = (r & 0x807f) | ((0x78 + ((r >>> 8) & 7)) << 7);
    if (i + 1 < count) {
      const q = r >>> 16;
      out[i + 1] = (q & 0x807f) | ((0x78 + ((q >>> 8) & 7)) << 7);
    }
  }
  return out;
}

/** Rows `rows` of a device bf16 tensor, copied one by one (a sample, not the whole tensor). */
export function readRows(t: DeviceTensor, rows: readonly number[]): Float32Array[] {
  const rowBytes = t.cols * TENSOR_DTYPE_BYTES[t.dtype];
  return rows.map((r) => {
    const host = new Uint16Array(new ArrayBuffer(rowBytes));
    const src = Deno.UnsafePointer.offset(t.pointer!, r * rowBytes);
    unwrap(native().weft_copy_d2h(t.deviceIndex, host, src, BigInt(rowBytes)), "weft_copy_d2h");
    return bf16ToF32(host);
  });
}

/**
 * Relative L2 error of sampled output rows against out[t] = x[t]·Σ_k w[t,k]
 * (identity experts, weighted combine). Both engines must produce it.
 */
export function outputError(
  out: DeviceTensor,
  x: Uint16Array,
  routing: RankRouting,
  hidden: number,
  topK: number,
): number {
  const T = out.rows;
  if (T === 0) return 0;
  const rows = Array.from(
    { length: Math.min(CHECK_ROWS, T) },
    (_, i) => Math.floor((i * T) / Math.min(CHECK_ROWS, T)),
  );
  const got = readRows(out, rows);
  let num = 0;
  let den = 0;
  rows.forEach((t, i) => {
    let w = 0;
    for (let k = 0; k < topK; k++) {
      if (routing.topkIdx[t * topK + k] >= 0) w += routing.topkWeights[t * topK + k];
    }
    const xs = bf16ToF32(x.subarray(t * hidden, (t + 1) * hidden));
    for (let h = 0; h < hidden; h++) {
      const want = xs[h] * w;
      const d = got[i][h] - want;
      num += d * d;
      den += want * want;
    }
  });
  // NaN (an unwritten or poisoned element) must fail the check, not pass it.
  const err = Math.sqrt(num / Math.max(den, Number.MIN_VALUE));
  return Number.isFinite(err) ? err : Infinity;
}

/** Times `iters` runs of `body` after `warmup` untimed ones; each run starts after a barrier. */
export async function timeRuns(
  comm: Communicator,
  timer: StreamTimer,
  warmup: number,
  iters: number,
  body: (last: boolean) => Promise<() => void>,
): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < warmup + iters; i++) {
    // Start together, with an idle stream, as the anchor harness does (barrier + synchronize).
    await comm.barrier();
    timer.start();
    const release = await body(i === warmup + iters - 1);
    const ms = await timer.stop();
    // Freeing per-run resources stays outside the timed window.
    release();
    if (i >= warmup) times.push(ms);
  }
  return times;
}

/** Gathers every rank's JSON-able value in rank order through the store. */
export async function gather<T>(comm: Communicator, key: string, value: T): Promise<T[]> {
  const all = await comm.store.allGather(
    `weft/bench/${key}`,
    comm.rank,
    comm.world,
    new TextEncoder().encode(JSON.stringify(value)),
    comm.timeoutMs,
  );
  return all.map((b) => JSON.parse(new TextDecoder().decode(b)) as T);
}
