/**
 * The benchmark's native helpers: the NCCL baseline (the permute → all-to-all
 * → regroup shuffle PyTorch users run today), CUDA-event timers on the
 * communicator's stream, and the GPU→GPU copy ceiling. Thin wrappers over
 * weft.h's bench calls, through lib/native.ts (the one dlopen).
 *
 * @module
 */
import type { PlanSpec } from "../dsl/types.ts";
import type { Communicator } from "../lib/dist/communicator.ts";
import type { DeviceTensor } from "../lib/gpu/device_tensor.ts";
import { packPlanDesc, planDescFields } from "../lib/gpu/plan_desc.ts";
import { readPointer } from "../lib/native/pointers.ts";
import { native } from "../lib/native/loader.ts";
import { unwrap } from "../lib/native/status.ts";
import { WeftError } from "../dsl/errors.ts";

/** A 4-byte out-parameter in its own ArrayBuffer, so its address stays put across a nonblocking call. */
function outInt32(): Int32Array<ArrayBuffer> {
  return new Int32Array(new ArrayBuffer(4));
}

function outFloat32(): Float32Array<ArrayBuffer> {
  return new Float32Array(new ArrayBuffer(4));
}

function closedError(what: string, rank: number): WeftError {
  return new WeftError({
    field: what,
    rank,
    problem: "is closed",
    fix: `create a new ${what} (close it only after its last use)`,
  });
}

/**
 * The NCCL baseline of one rank: permute rows by destination expert, exchange
 * counts, NCCL all-to-all, regroup by local expert; then the reverse and the
 * f32 weighted sum. Collective: every rank runs it in step.
 *
 * @example
 * ```ts ignore
 * import { NcclBaseline } from "./baseline.ts";
 * using baseline = NcclBaseline.create(comm, plan, { maxTokens: 4096 });
 * const recvRows = await baseline.run(x, topkIdx, topkWeights, out);
 * ```
 */
export class NcclBaseline implements Disposable {
  /** Rank this baseline runs on. */
  readonly rank: number;
  /** Most tokens one call may pass. */
  readonly maxTokens: number;
  #handle: Deno.PointerValue;

  private constructor(rank: number, maxTokens: number, handle: Deno.PointerValue) {
    this.rank = rank;
    this.maxTokens = maxTokens;
    this.#handle = handle;
  }

  /**
   * Builds this rank's baseline for `plan`. The communicator must have been
   * created with `nccl: true`: the baseline's all-to-all is NCCL's.
   */
  static create(
    comm: Communicator,
    plan: PlanSpec,
    options: { readonly maxTokens: number },
  ): NcclBaseline {
    if (!comm.nccl) {
      throw new WeftError({
        field: "communicator",
        rank: comm.rank,
        problem: "has no NCCL communicator, which the baseline's all-to-all needs",
        fix: "create the Communicator with { nccl: true }",
      });
    }
    const { bytes, keepAlive } = packPlanDesc(
      planDescFields(plan, comm.rank, { maxTokens: options.maxTokens }),
    );
    const out = new BigUint64Array(1);
    unwrap(
      native().weft_baseline_create(comm.nativeHandle, bytes, out),
      "weft_baseline_create",
      { rank: comm.rank, field: "plan" },
    );
    // The native side copies the plan's arrays during create; they may go now.
    void keepAlive;
    return new NcclBaseline(comm.rank, options.maxTokens, readPointer(out));
  }

  /**
   * One dispatch + combine with identity experts: `x` [T × H], `topkIdx`
   * (i32) and `topkWeights` (f32) [T × K] (all device tensors on this rank's
   * GPU, used in place: the same routing tensors weft's engine is timed
   * with) → `out` [T × H] device. Returns the rows this rank received (R).
   */
  async run(
    x: DeviceTensor,
    topkIdx: DeviceTensor<"i32">,
    topkWeights: DeviceTensor<"f32">,
    out: DeviceTensor,
  ): Promise<number> {
    const handle = this.#open();
    const recvRows = outInt32();
    unwrap(
      await native().weft_baseline_run(
        handle,
        x.pointer,
        topkIdx.pointer,
        topkWeights.pointer,
        x.rows,
        out.pointer,
        recvRows,
      ),
      "weft_baseline_run",
      { rank: this.rank },
    );
    return recvRows[0];
  }

  /** Frees the baseline's buffers. Safe to call twice. */
  close(): void {
    if (this.#handle === null) return;
    const handle = this.#handle;
    this.#handle = null;
    unwrap(native().weft_baseline_destroy(handle), "weft_baseline_destroy", { rank: this.rank });
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #open(): Deno.PointerValue {
    if (this.#handle === null) throw closedError("NcclBaseline", this.rank);
    return this.#handle;
  }
}

/**
 * A pair of CUDA events on the communicator's stream, the stream weft's
 * engine and the baseline run on, so a start/stop pair brackets exactly the
 * device work (and any idle gap the host leaves) between them.
 *
 * @example
 * ```ts ignore
 * import { StreamTimer } from "./baseline.ts";
 * using timer = StreamTimer.create(comm);
 * timer.start();
 * await engine.dispatch(inputs);
 * const ms = await timer.stop();
 * ```
 */
export class StreamTimer implements Disposable {
  /** Rank this timer runs on. */
  readonly rank: number;
  #handle: Deno.PointerValue;

  private constructor(rank: number, handle: Deno.PointerValue) {
    this.rank = rank;
    this.#handle = handle;
  }

  /** Creates a timer on `comm`'s stream. */
  static create(comm: Communicator): StreamTimer {
    const out = new BigUint64Array(1);
    unwrap(native().weft_timer_create(comm.nativeHandle, out), "weft_timer_create", {
      rank: comm.rank,
    });
    return new StreamTimer(comm.rank, readPointer(out));
  }

  /** Records the start event on the stream (returns at once). */
  start(): void {
    unwrap(native().weft_timer_start(this.#open()), "weft_timer_start", { rank: this.rank });
  }

  /** Records the stop event, waits for it and returns the milliseconds between the two. */
  async stop(): Promise<number> {
    const ms = outFloat32();
    unwrap(await native().weft_timer_stop(this.#open(), ms), "weft_timer_stop", {
      rank: this.rank,
    });
    return ms[0];
  }

  /** Frees the events. Safe to call twice. */
  close(): void {
    if (this.#handle === null) return;
    const handle = this.#handle;
    this.#handle = null;
    unwrap(native().weft_timer_destroy(handle), "weft_timer_destroy", { rank: this.rank });
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #open(): Deno.PointerValue {
    if (this.#handle === null) throw closedError("StreamTimer", this.rank);
    return this.#handle;
  }
}

/**
 * Times `iters` copy-engine copies of `bytes` from this rank's symmetric heap
 * to `peer`'s and returns the median, ms. Not collective: the peer only
 * needs to be alive (its heap is mapped here).
 *
 * @example
 * ```ts ignore
 * import { copyCeilingMs } from "./baseline.ts";
 * const ms = await copyCeilingMs(comm, 1, 2 ** 30, 10);
 * console.log(`${(2 ** 30 / (ms * 1e-3) / 1e9).toFixed(0)} GB/s one-way`);
 * ```
 */
export async function copyCeilingMs(
  comm: Communicator,
  peer: number,
  bytes: number,
  iters: number,
): Promise<number> {
  const ms = outFloat32();
  unwrap(
    await native().weft_copy_ceiling(comm.nativeHandle, peer, BigInt(bytes), iters, ms),
    "weft_copy_ceiling",
    { rank: comm.rank, field: "copy ceiling" },
  );
  return ms[0];
}
