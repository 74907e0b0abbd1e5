/**
 * Decode mode on the GPU (issue #16): dispatch and combine of one rank with
 * every size fixed by a capacity stated up front, nothing read by the host
 * between the routing and combine's output, so that dispatch + (your expert
 * kernels) + combine can be captured once as a CUDA graph and replayed every
 * decode step with new inputs written in place. native/README.md "Decode
 * mode" has the protocol; lib/sim/decode.ts is its CPU oracle.
 *
 * One node only (one NVLink/IPC domain, world ≤ 32): the engine across
 * nodes exchanges counts through the host on every call, which a graph
 * cannot hold, so a communicator over several nodes is refused naming
 * `mode`.
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import { WeftError } from "../../dsl/errors.ts";
import type { HostRows } from "../core/engine_api.ts";
import { native } from "../native/loader.ts";
import { Status, unwrap } from "../native/status.ts";
import { readPointer } from "../native/pointers.ts";
import { NativeHandle } from "../native/native_handle.ts";
import type { Communicator } from "../dist/communicator.ts";
import { DeviceTensor, type ViewOwner } from "./device_tensor.ts";
import { DECODE_INFO, decodeDecodeInfo, type DecodeInfo } from "./decode_info.ts";
import { decodeExpertCapacity } from "../sim/decode.ts";
import {
  type CaptureContext,
  checkOptions,
  type DecodeFootprint,
  type DecodeOptions,
  type DecodeStep,
  descFor,
} from "./decode_options.ts";

export type {
  CaptureContext,
  DecodeFootprint,
  DecodeOptions,
  DecodeStep,
} from "./decode_options.ts";

/**
 * The decode engine of one rank.
 *
 * @example
 * ```ts ignore
 * const options = { capacity: 128 };
 * const { heapBytes } = DecodeEngine.footprint(plan, options);
 * await using comm = await Communicator.fromEnv({ heapBytes });
 * using dec = await DecodeEngine.create(plan, comm, options);
 * const graph = dec.capture();          // dispatch → (identity expert) → combine
 * for (const step of steps) {
 *   dec.stage(step);                     // writes x, routing, token count in place
 *   dec.replay(graph);
 *   await dec.check();                   // errors of the step, on every rank
 *   const out = await dec.out.read();
 * }
 * ```
 */
export class DecodeEngine implements Disposable {
  /** The plan. */
  readonly plan: PlanSpec;
  /** This rank. */
  readonly rank: number;
  /** CUDA device index. */
  readonly device: number;
  /** Most tokens per rank per step. */
  readonly capacity: number;
  /** Rows per local expert (C). */
  readonly expertCapacity: number;
  /** This rank's local experts (L). */
  readonly localExperts: number;
  /** Exact memory of this engine. */
  readonly footprint: DecodeFootprint;
  /** Input rows at their fixed address in the heap, [capacity × H]. */
  readonly x: DeviceTensor<DType>;
  /** Input expert ids, [capacity × K] i32. */
  readonly topkIdx: DeviceTensor<"i32">;
  /** Input weights, [capacity × K] f32. */
  readonly topkWeights: DeviceTensor<"f32">;
  /** The step's token count, one i32 on the device (a graph reads it every replay). */
  readonly tokens: DeviceTensor<"i32">;
  /** [L·C × H] received rows: expert l's at l·C … l·C + counts[l] − 1. */
  readonly recv: DeviceTensor<DType>;
  /** [L·C × 1] weights (0 in padding). */
  readonly recvWeights: DeviceTensor<"f32">;
  /** [L × 1] rows per local expert. */
  readonly expertCounts: DeviceTensor<"i32">;
  /** [L·C × 1] source rank of each row (-1 in padding). */
  readonly srcRank: DeviceTensor<"i32">;
  /** [L·C × 1] token of each row at its source (-1 in padding). */
  readonly srcToken: DeviceTensor<"i32">;
  /** [L·C × 1] top-k slot of each row (-1 in padding). */
  readonly srcK: DeviceTensor<"i32">;
  /** [capacity × H] combine's default output (rows ≥ the step's tokens are stale). */
  readonly out: DeviceTensor<DType>;
  /** The communicator's cudaStream_t. */
  readonly stream: Deno.PointerValue;
  readonly #native: NativeHandle;
  readonly #release: () => void;
  #graphs = 0;

  private constructor(
    plan: PlanSpec,
    comm: Communicator,
    pointer: Deno.PointerValue,
    info: DecodeInfo,
  ) {
    this.plan = plan;
    this.rank = comm.rank;
    this.device = comm.device;
    this.capacity = info.maxTokens;
    this.expertCapacity = info.expertCapacity;
    this.localExperts = info.localExperts;
    this.footprint = {
      heapBytes: info.heapBytes,
      deviceBytes: info.deviceBytes,
      totalBytes: info.heapBytes + info.deviceBytes,
    };
    this.stream = info.stream;
    this.#native = new NativeHandle(this, pointer, (p) => native().weft_decode_destroy(p), {
      field: "decode engine",
      rank: this.rank,
      fix: "create a new DecodeEngine",
    });
    const handle = this.#native;
    const owner: ViewOwner = {
      get closed() {
        return handle.closed;
      },
      description: "decode engine",
    };
    const { hidden: H, topK: K, dtype } = plan;
    const rows = info.localExperts * info.expertCapacity;
    const view = <D extends DType | "i32" | "f32">(
      d: D,
      r: number,
      c: number,
      p: Deno.PointerValue,
    ) => DeviceTensor.view(this.device, d, r, c, p, owner);
    this.x = view(dtype, info.maxTokens, H, info.x);
    this.topkIdx = view("i32", info.maxTokens, K, info.topkIdx);
    this.topkWeights = view("f32", info.maxTokens, K, info.topkWeights);
    this.tokens = view("i32", 1, 1, info.tokens);
    this.recv = view(dtype, rows, H, info.recv);
    this.recvWeights = view("f32", rows, 1, info.recvWeights);
    this.expertCounts = view("i32", info.localExperts, 1, info.expertCounts);
    this.srcRank = view("i32", rows, 1, info.srcRank);
    this.srcToken = view("i32", rows, 1, info.srcToken);
    this.srcK = view("i32", rows, 1, info.srcK);
    this.out = view(dtype, info.maxTokens, H, info.out);
    this.#release = comm.adopt(this);
  }

  /**
   * The exact memory a decode engine of `plan` with `options` takes on
   * `rank` (`weft_decode_heap_bytes`); the heap part is the same on every rank.
   */
  static footprint(plan: PlanSpec, options: DecodeOptions, rank = 0): DecodeFootprint {
    decodeExpertCapacity(plan, {
      maxTokens: options.capacity,
      expertCapacity: options.expertCapacity ?? 0,
    }, rank);
    checkOptions(options, rank);
    const { bytes, keepAlive } = descFor(plan, rank, options);
    const heap = new BigUint64Array(1), dev = new BigUint64Array(1);
    unwrap(
      native().weft_decode_heap_bytes(bytes, options.expertCapacity ?? 0, heap, dev),
      "weft_decode_heap_bytes",
      { rank, field: "mode" },
    );
    void keepAlive;
    const heapBytes = Number(heap[0]), deviceBytes = Number(dev[0]);
    return { heapBytes, deviceBytes, totalBytes: heapBytes + deviceBytes };
  }

  /**
   * Builds this rank's decode engine. Collective (every rank calls it: the
   * decode barrier's flags are reset between two barriers). The
   * communicator must be of one node with a heap of at least
   * {@link DecodeEngine.footprint}'s heapBytes, and serves no Engine.
   */
  static async create(
    plan: PlanSpec,
    comm: Communicator,
    options: DecodeOptions,
  ): Promise<DecodeEngine> {
    const rank = comm.rank;
    decodeExpertCapacity(plan, {
      maxTokens: options.capacity,
      expertCapacity: options.expertCapacity ?? 0,
    }, rank);
    checkOptions(options, rank);
    if (comm.nodes > 1) {
      throw new WeftError({
        field: "mode",
        rank,
        problem: `"decode" needs one node; this communicator spans ${comm.nodes} nodes`,
        fix:
          "use the default mode (Engine) across nodes: its engine exchanges counts through the host every call",
      });
    }
    if (plan.world !== comm.world) {
      throw new WeftError({
        field: "plan.world",
        rank,
        problem: `is ${plan.world}, but the communicator has ${comm.world} ranks`,
        fix: "compile the plan with { world: communicator.world }",
      });
    }
    const { bytes, keepAlive } = descFor(plan, rank, options);
    const out = new BigUint64Array(1);
    const status = await native().weft_decode_create(
      comm.nativeHandle,
      bytes,
      options.expertCapacity ?? 0,
      out,
    );
    void keepAlive;
    unwrap(status, "weft_decode_create", { rank, field: "mode" });
    const pointer = readPointer(out);
    const raw = new Uint8Array(DECODE_INFO.bytes);
    const rc = native().weft_decode_get_info(pointer, raw);
    if (rc !== 0) native().weft_decode_destroy(pointer);
    unwrap(rc, "weft_decode_get_info", { rank });
    return new DecodeEngine(plan, comm, pointer, decodeDecodeInfo(raw));
  }

  /**
   * Writes one step's inputs into the engine's fixed input buffers and the
   * token count (host copies, which wait for the device first, so the
   * previous step is done). Not collective. A wrong shape is a WeftError
   * here; bad values are caught on the device and reported by
   * {@link DecodeEngine.check}.
   */
  stage(step: DecodeStep): void {
    const { hidden: H, topK: K } = this.plan;
    const T = step.topkIdx.length / K;
    if (
      !Number.isInteger(T) || T > this.capacity || step.topkWeights.length !== T * K ||
      step.x.length !== T * H
    ) {
      throw new WeftError({
        field: "step",
        rank: this.rank,
        problem:
          `topkIdx has ${step.topkIdx.length} ids, topkWeights ${step.topkWeights.length}, x ${step.x.length} ` +
          `elements (K = ${K}, hidden = ${H}, capacity ${this.capacity})`,
        fix: "pass T·K ids and weights and T·hidden elements, T ≤ capacity",
      });
    }
    const copy = (dst: DeviceTensor, data: HostRows | Int32Array) => {
      if (data.byteLength === 0) return;
      unwrap(
        native().weft_copy_h2d(this.device, dst.pointer, data, BigInt(data.byteLength)),
        "weft_copy_h2d",
        { rank: this.rank },
      );
    };
    copy(this.x, step.x);
    copy(this.topkIdx, step.topkIdx);
    copy(this.topkWeights, step.topkWeights);
    copy(this.tokens, new Int32Array([T]));
  }

  /** Enqueues a dispatch of the staged step (collective; never waits). */
  dispatch(): void {
    unwrap(native().weft_decode_dispatch(this.#native.pointer), "weft_decode_dispatch", {
      rank: this.rank,
    });
    this.#armReads();
  }

  /**
   * Enqueues combine of `y` ([L·C × H] in the receive layout; default
   * `recv`, the identity expert) into `out` ([capacity × H]; default
   * {@link DecodeEngine.out}). Collective; never waits.
   */
  combine(y?: DeviceTensor, out?: DeviceTensor): void {
    const { hidden: H } = this.plan;
    const rows = this.localExperts * this.expertCapacity;
    for (const [name, t, want] of [["y", y, rows], ["out", out, this.capacity]] as const) {
      if (t !== undefined && (t.dtype !== this.plan.dtype || t.cols !== H || t.rows < want)) {
        throw new WeftError({
          field: name,
          rank: this.rank,
          problem: `is ${t.dtype} [${t.rows} × ${t.cols}]`,
          fix: `pass a ${this.plan.dtype} tensor of at least [${want} × ${H}] on this GPU`,
        });
      }
    }
    unwrap(
      native().weft_decode_combine(this.#native.pointer, y?.pointer ?? null, out?.pointer ?? null),
      "weft_decode_combine",
      { rank: this.rank, field: "ys" },
    );
    this.#armReads(out);
  }

  /**
   * Captures dispatch → `expert` → combine (or only one part) into a CUDA
   * graph and returns its index for {@link DecodeEngine.replay}. `expert`
   * may enqueue kernels on `ctx.stream` and return the tensor combine reads
   * (default: `recv`, the identity expert). Collective only in that every
   * rank must capture the same parts; nothing runs until a replay. At most
   * 8 graphs per engine.
   */
  capture(
    expert?: (ctx: CaptureContext) => DeviceTensor | void,
    parts: "both" | "dispatch" | "combine" = "both",
  ): number {
    const d = this.#native.pointer;
    unwrap(native().weft_decode_capture_begin(d), "weft_decode_capture_begin", { rank: this.rank });
    let y: DeviceTensor | void = undefined;
    const graph = new Int32Array(1);
    try {
      if (parts !== "combine") this.dispatch();
      y = expert?.({ stream: this.stream, recv: this.recv, expertCounts: this.expertCounts });
      if (parts !== "dispatch") this.combine(y ?? undefined);
    } catch (error) {
      // End the capture so the stream is usable again, but do not make the
      // partial graph the default of replay(); the first error is the one thrown.
      native().weft_decode_capture_end(d, graph);
      throw error;
    }
    const rc = native().weft_decode_capture_end(d, graph);
    unwrap(rc, "weft_decode_capture_end", { rank: this.rank });
    this.#graphs = graph[0] + 1;
    return graph[0];
  }

  /** Launches captured graph `graph` (default: the last captured). Collective; never waits. */
  replay(graph: number = this.#graphs - 1): void {
    unwrap(native().weft_decode_replay(this.#native.pointer, graph), "weft_decode_replay", {
      rank: this.rank,
      field: "graph",
    });
    this.#armReads();
  }

  /**
   * The next `read()` of each output view (and of `out`, a caller's
   * combine output) runs {@link DecodeEngine.check} first, so reading the
   * rows of a failed step throws its error instead (a host touch reports).
   */
  #armReads(out?: DeviceTensor): void {
    const check = () => this.check();
    for (
      const t of [
        this.recv,
        this.recvWeights,
        this.expertCounts,
        this.srcRank,
        this.srcToken,
        this.srcK,
        this.out,
      ]
    ) t.settleBeforeRead(check);
    out?.settleBeforeRead(check);
  }

  /**
   * Waits for this engine's work and throws the first error of the steps
   * since the last check (bad input, an expert over its capacity, a missing
   * peer), then clears it: every rank that checks after the same step
   * throws. Not collective.
   */
  async check(): Promise<void> {
    const status = await native().weft_decode_check(this.#native.pointer);
    unwrap(
      status,
      "weft_decode_check",
      status === Status.CAPACITY
        ? {
          rank: this.rank,
          field: "expertCapacity",
          fix:
            "create the DecodeEngine with a larger expertCapacity (world × capacity never overflows), " +
            "or write a token count within the capacity",
        }
        : { rank: this.rank },
    );
  }

  /** Frees the graphs and buffers (waits for the device first). */
  close(): void {
    if (this.#native.closed) return;
    this.#release();
    this.#native.close();
  }

  /** Same as {@link DecodeEngine.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
