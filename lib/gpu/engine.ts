/**
 * The GPU engine: one rank of a plan, driving libweft through the
 * communicator's device. Same call shape as the Simulator
 * (lib/core/engine_api.ts), with one input and one output per call because a
 * process drives one rank.
 *
 * Dispatch, re-dispatch and combine are collective: every rank calls them in
 * the same order, so a host-side input error fails the call on every rank
 * at once instead of leaving the peers waiting (reject.ts).
 *
 * Calls are stream-ordered, like CUDA launches: dispatch returns once the
 * layout is known and the row movement is queued; combine returns once the
 * partial sums are queued, behind the dispatch, without waiting for it. The
 * host hops back to JavaScript then overlap the GPU's work instead of idling
 * it. What fails after a return (a peer dies mid-combine) is thrown by the
 * next dispatch (on every rank alike), by {@link Engine.synchronize}, or by
 * reading an output: outputs carry a settle hook, so `await out.read()`
 * never returns rows of a failed call.
 *
 * The pieces: options.ts (options), plan_desc.ts (the plan as native reads
 * it), inputs.ts (staging and placing inputs), handle.ts (dispatch handles
 * and their outputs), combine.ts (combine's buffers), reject.ts (failing a
 * collective call on every rank).
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import type {
  Dispatched,
  DispatchHandle,
  HostRows,
  QuantizedInput,
  RankInput,
  RankRouting,
  RoutingInput,
  ShuffleEngine,
  Tensor,
} from "../core/engine_api.ts";
import { WeftError } from "../../dsl/errors.ts";
import { native } from "../native/loader.ts";
import { unwrap } from "../native/status.ts";
import { holding, readPointer } from "../native/pointers.ts";
import { type ClosedError, NativeHandle } from "../native/native_handle.ts";
import type { Communicator } from "../dist/communicator.ts";
import type { DeviceTensor, ViewOwner } from "./device_tensor.ts";
import { checkCommunicator, checkEngineOptions, type EngineOptions } from "./options.ts";
import { createNativeEngine, planHeapBytes } from "./plan_desc.ts";
import { RankInputs } from "./inputs.ts";
import { orReject, rejectCombine, rejectOnEveryRank, rejectRedispatch } from "./reject.ts";
import {
  type GpuDispatchHandle,
  HandleRegistry,
  openHandle,
  ownHandle,
  settleOnRead,
} from "./handle.ts";
import { COMBINE_FIX, combineBuffers } from "./combine.ts";

export { DEFAULT_MAX_TOKENS, type EngineOptions } from "./options.ts";
export { GpuDispatchHandle } from "./handle.ts";

/** Frees the engine and its handles (module-level: it must not hold the Engine). */
function destroyAllOf(registry: HandleRegistry): () => void {
  return () => registry.destroyAll();
}

/**
 * The GPU engine for one rank.
 *
 * @example
 * ```ts ignore
 * import { Communicator } from "../dist/communicator.ts";
 * import { Engine } from "./engine.ts";
 * import { experts } from "../../dsl/mod.ts";
 * await using comm = await Communicator.fromEnv();
 * const plan = experts(256).byDevice().topK(8).dtype("bf16").hidden(7168).compile({ world: comm.world });
 * using engine = await Engine.create(plan, comm, { maxTokens: 8192 });
 * const { results: [mine], handle } = await engine.dispatch([{ x, topkIdx, topkWeights }]);
 * const [out] = await engine.combine(handle, [expertOutputs(mine.recv)]);
 * handle.close();
 * ```
 */
export class Engine implements ShuffleEngine {
  /** Always "gpu". */
  readonly kind = "gpu" as const;
  /** `[rank]`: a GPU process drives one rank. */
  readonly ranks: readonly number[];
  /** The plan this engine executes. */
  readonly plan: PlanSpec;
  /** This process's rank. */
  readonly rank: number;
  /** The CUDA device index. */
  readonly device: number;
  /** Most tokens one dispatch accepts. */
  readonly maxTokens: number;
  readonly #comm: Communicator;
  readonly #registry: HandleRegistry;
  readonly #native: NativeHandle;
  readonly #closedError: ClosedError;
  readonly #release: () => void;
  readonly #inputs: RankInputs;
  #closeWhenIdle = false;

  private constructor(
    plan: PlanSpec,
    comm: Communicator,
    pointer: Deno.PointerValue,
    maxTokens: number,
  ) {
    this.plan = plan;
    this.#comm = comm;
    this.rank = comm.rank;
    this.device = comm.device;
    this.ranks = Object.freeze([comm.rank]);
    this.maxTokens = maxTokens;
    this.#registry = new HandleRegistry(Deno.UnsafePointer.value(pointer!));
    this.#closedError = { field: "engine", rank: this.rank, fix: "create a new Engine" };
    this.#native = new NativeHandle(this, pointer, destroyAllOf(this.#registry), this.#closedError);
    this.#inputs = new RankInputs(this, pointer);
    this.#release = comm.adopt(this);
  }

  /**
   * The symmetric heap `plan` needs per rank (`weft_engine_heap_bytes`).
   * Create the Communicator with at least the largest value over the plans
   * it serves.
   */
  static heapBytes(
    plan: PlanSpec,
    options: EngineOptions & { readonly rank?: number } = {},
  ): number {
    return planHeapBytes(plan, options.rank ?? 0, options);
  }

  /** Builds this rank's engine for `plan` on `communicator` (not collective). */
  static create(
    plan: PlanSpec,
    communicator: Communicator,
    options: EngineOptions = {},
  ): Promise<Engine> {
    const rank = communicator.rank;
    const maxTokens = checkEngineOptions(options, rank);
    checkCommunicator(plan, communicator, maxTokens, planHeapBytes(plan, rank, options));
    const pointer = createNativeEngine(communicator.nativeHandle, plan, rank, options);
    return Promise.resolve(new Engine(plan, communicator, pointer, maxTokens));
  }

  /**
   * Dispatches this rank's batch. `x` may be host rows or a DeviceTensor on
   * this GPU; {@link Engine.inputRows} and {@link Engine.inputRouting} (the
   * inputs written where weft reads them) save the copies. The routing may
   * be host arrays or tensors: an `i32` topkIdx / `f32` topkWeights
   * DeviceTensor on this GPU (a router's output, as it is) is copied on the
   * GPU, with no host round trip (on the communicator's stream: kernels of
   * your own streams that write it must have finished); any other tensor is
   * read to the host and staged like arrays. Returns once the layout is
   * known and the rows are queued: `recv` is a view owned by the
   * handle (valid until the handle closes) that the GPU is still filling
   * (`read()` waits for it); with a pattern that quantizes dispatch it holds
   * e4m3 bytes and `recvScales` their block scales, another such view. The
   * index arrays are copied from the device on first access. The inputs may
   * be reused as soon as this returns.
   */
  dispatch(inputs: readonly RankInput[]): Promise<Dispatched> {
    return this.#call(async (engine) => {
      const p = await orReject(
        this.#inputs.dispatch(inputs),
        () => rejectOnEveryRank(this.plan, engine),
      );
      // The first half only enqueues (it never waits), so it runs on this
      // thread: the layout starts on the GPU now, while the second half,
      // which waits for its counts, makes the hop to Deno's thread pool.
      const began = p.scales === undefined
        ? native().weft_dispatch_begin(engine, p.x, p.idx, p.weights, p.tokens)
        : native().weft_dispatch_begin_e4m3(engine, p.x, p.scales, p.idx, p.weights, p.tokens);
      unwrap(began, "weft_dispatch_begin", { rank: this.rank });
      const out = new BigUint64Array(1);
      const status = await holding([p, out], () => native().weft_dispatch_finish(engine, out));
      unwrap(status, "weft_dispatch_finish", { rank: this.rank });
      const handle = openHandle(this, this.#registry, readPointer(out), p.tokens);
      return { results: [handle.result], handle };
    });
  }

  /**
   * The layout step of dispatch alone (`weft_dispatch_layout`): stages this
   * rank's routing (host arrays or tensors, as {@link Engine.dispatch} takes
   * them), checks it on the device, generates the indices and allocates the
   * outputs, moving no rows. {@link Engine.redispatch} then moves them;
   * layout + redispatch give exactly what dispatch gives. Collective.
   */
  layout(routing: readonly RoutingInput[]): Promise<GpuDispatchHandle> {
    return this.#call(async (engine) => {
      const at = await orReject(
        this.#inputs.layout(routing),
        () => rejectOnEveryRank(this.plan, engine),
      );
      const out = new BigUint64Array(1);
      const status = await holding(
        [at.keepAlive, out],
        () => native().weft_dispatch_layout(engine, at.idx, at.weights, at.tokens, out),
      );
      unwrap(status, "weft_dispatch_layout", { rank: this.rank });
      return openHandle(this, this.#registry, readPointer(out), at.tokens);
    });
  }

  /**
   * Sends new rows through a dispatched batch's layout (same routing, no
   * layout work). The rows land in the handle's receive buffer, so the
   * `recv` view of the original dispatch shows them too.
   */
  redispatch(
    handle: DispatchHandle,
    xs: readonly (HostRows | Tensor | QuantizedInput)[],
  ): Promise<Dispatched> {
    return this.#onHandle(handle, async (h, nativeHandle) => {
      const r = await orReject(
        this.#inputs.redispatch(xs, h.tokens),
        () => rejectRedispatch(nativeHandle),
      );
      const status = await holding(
        [r.keepAlive],
        () =>
          "scales" in r
            ? native().weft_redispatch_e4m3(nativeHandle, r.q, r.scales)
            : native().weft_redispatch(nativeHandle, r.pointer, 0),
      );
      unwrap(status, "weft_redispatch", { rank: this.rank });
      settleOnRead(this, h.result.recv);
      if (h.result.recvScales !== undefined) settleOnRead(this, h.result.recvScales);
      return { results: [h.result], handle: h };
    });
  }

  /**
   * Combines expert outputs `[y]` (R × H in the handle's receive layout) into
   * this rank's [T × H] output. The output is a new DeviceTensor the caller
   * owns, or `options.out` (e.g. a poisoned tensor in tests). Returns once the
   * work is queued: `read()` of the output waits for it; `y` must stay
   * unchanged until then (or {@link Engine.synchronize}).
   *
   * A host-side error (shape, dtype) still enters the collective with NULL
   * buffers, which native rejects on every rank, so the peers fail at once
   * instead of waiting for this rank.
   */
  combine(
    handle: DispatchHandle,
    ys: readonly (HostRows | Tensor)[],
    options: { readonly out?: readonly DeviceTensor[] } = {},
  ): Promise<DeviceTensor<DType>[]> {
    return this.#onHandle(handle, async (h, nativeHandle) => {
      using b = await orReject(
        combineBuffers(this, this.#inputs, h, ys, options.out),
        () => rejectCombine(nativeHandle),
      );
      const status = await holding(
        [b],
        () => native().weft_combine(nativeHandle, b.y, b.out.pointer),
      );
      unwrap(status, "weft_combine", { rank: this.rank, field: "ys", fix: COMBINE_FIX });
      settleOnRead(this, b.out);
      return [b.keep()];
    });
  }

  /**
   * This rank's input rows in the engine's symmetric heap, `[tokens ×
   * hidden]` (tokens ≤ maxTokens): a batch written here and passed as `x` to
   * {@link Engine.dispatch} or {@link Engine.redispatch} is not copied — the
   * peers read the rows from where they are (a quantizing pattern's dispatch
   * quantizes them from there). A view, valid while the engine is
   * open. Write the next batch only after the previous dispatch settled
   * ({@link DeviceTensor.write} waits for it; with your own kernels, call
   * {@link Engine.synchronize} first): until then peers may still read it.
   */
  inputRows(tokens: number = this.maxTokens): DeviceTensor<DType> {
    return this.#inputs.rows(this.#native.pointer, tokens, this.#viewOwner());
  }

  /**
   * For a pattern that quantizes dispatch: where this rank's sent rows are
   * staged in the symmetric heap, `q` `[tokens × hidden]` e4m3 and `scales`
   * `[tokens × hidden/128]` f32. Rows quantized straight into these views
   * (by your own kernel, any positive scales) and passed as `x` to
   * {@link Engine.dispatch} or {@link Engine.redispatch} are neither copied
   * nor quantized: the peers read them there. Views, valid while the engine
   * is open; the same rule as {@link Engine.inputRows} for the next batch.
   */
  inputQuantizedRows(
    tokens: number = this.maxTokens,
  ): { q: DeviceTensor<"e4m3">; scales: DeviceTensor<"f32"> } {
    return this.#inputs.quantizedRows(this.#native.pointer, tokens, this.#viewOwner());
  }

  /**
   * This rank's routing staging in page-locked host memory, `[tokens × K]`
   * ids and weights (tokens ≤ maxTokens). Dispatch and layout copy any
   * routing that is not already on this GPU through here to the GPU by DMA;
   * a router on the host that writes its result here saves that host copy
   * too (a router on the GPU passes its tensors instead). Views, valid while
   * the engine is open; free to rewrite once the dispatch that read them has
   * returned.
   */
  inputRouting(tokens: number = this.maxTokens): RankRouting {
    return this.#inputs.routing(tokens);
  }

  /**
   * Waits until the GPU work of this engine's last call is done and throws
   * its failure, if any (a dead or stuck peer, a peer's failure). Needed only
   * before handing outputs to code that does not go through weft
   * ({@link DeviceTensor.read} does it already). Not collective.
   */
  async synchronize(): Promise<void> {
    await this.#comm.synchronize();
  }

  /** Frees every open handle of this engine, then the engine. Deferred while a call runs. */
  close(): void {
    if (this.#native.closed) return;
    if (this.#registry.busy) {
      this.#closeWhenIdle = true;
      return;
    }
    this.#release();
    this.#native.close();
  }

  /** Same as {@link Engine.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  // ---------------------------------------------------------------- internals

  /** Runs `call` as this engine's one running call (collective calls never overlap). */
  async #call<T>(call: (engine: Deno.PointerValue) => Promise<T>): Promise<T> {
    if (this.#closeWhenIdle) throw new WeftError({ ...this.#closedError, problem: "is closed" });
    const engine = this.#native.pointer;
    if (this.#registry.busy) {
      throw new WeftError({
        field: "engine",
        rank: this.rank,
        problem: "another dispatch, re-dispatch or combine is still running",
        fix:
          "await each call before starting the next: they are collective and run in the same order on every rank",
      });
    }
    this.#registry.busy = true;
    try {
      return await call(engine);
    } finally {
      this.#registry.busy = false;
      this.#registry.flush();
      if (this.#closeWhenIdle) {
        this.#closeWhenIdle = false;
        this.close();
      }
    }
  }

  /** {@link Engine.#call} on `handle`, which must be an open handle of this engine. */
  #onHandle<T>(
    handle: DispatchHandle,
    call: (h: GpuDispatchHandle, nativeHandle: Deno.PointerValue) => Promise<T>,
  ): Promise<T> {
    return this.#call(() => {
      const h = ownHandle(this, handle);
      return call(h, h.pointerFor(this));
    });
  }

  /** The owner of views into this engine's heap: they die with the engine. */
  #viewOwner(): ViewOwner {
    const engine = this.#native;
    return {
      get closed() {
        return engine.closed;
      },
      description: "weft engine",
    };
  }
}
