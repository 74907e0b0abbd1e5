/**
 * The GPU engine: one rank of a plan, driving libweft through the
 * communicator's device. Same call shape as the Simulator
 * (lib/engine_api.ts), with one input and one output per call because a
 * process drives one rank.
 *
 * Dispatch, re-dispatch and combine are collective: every rank calls them in
 * the same order. That is why a host-side input error does not simply throw:
 * this rank would leave its peers waiting in the collective until their
 * timeout. Instead it still enters `weft_dispatch` with a one-token batch
 * whose expert id is out of range, which the device-side check rejects on
 * every rank at once; this rank then throws its precise host error and the
 * peers throw the native "bad input" error naming this rank. Nothing is
 * written anywhere.
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
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import type {
  Dispatched,
  DispatchHandle,
  DispatchResult,
  HostArray,
  HostRows,
  QuantizedInput,
  RankInput,
  RankRouting,
  RoutingInput,
  ShuffleEngine,
  Tensor,
} from "../core/engine_api.ts";
import { WeftError } from "../../dsl/errors.ts";
import { QUANT_BLOCK } from "../core/fp8.ts";
import {
  checkInputRows,
  checkRankShapes,
  checkRoutingShape,
  checkRows,
  isQuantizedInput,
  type QuantizedShape,
  type RowsShape,
} from "../core/input_check.ts";
import {
  Codes,
  decodeDispatchInfo,
  DISPATCH_INFO,
  type DispatchInfo,
  holding,
  hostPointer,
  packPlanDesc,
  type PlanDescFields,
  readPointer,
  stableCopy,
  Status,
} from "../native/ffi.ts";
import { native, nativeError, unwrap } from "../native/native.ts";
import { DeviceTensor, type ViewOwner } from "./device_tensor.ts";
import type { Communicator } from "../dist/communicator.ts";

/** Tokens per rank per batch when {@link EngineOptions.maxTokens} is not given. */
export const DEFAULT_MAX_TOKENS = 4096;

/** Options of {@link Engine.create}. */
export interface EngineOptions {
  /** Most tokens any rank passes in one batch (sizes the buffers; default 4096). */
  readonly maxTokens?: number;
  /**
   * How combine's partial sums cross between GPUs. `dtype` (default) sends
   * each (token, device) partial in the data's dtype, as every peer system
   * does: half the bytes of f32 for bf16/f16, one more rounding per partial
   * (results stay within the dtype's rounding of the Simulator and are
   * deterministic run to run). `f32` keeps DESIGN.md's single rounding
   * exactly, at twice the combine traffic.
   */
  readonly combineWire?: "dtype" | "f32";
}

/**
 * The fields of `weft_plan_desc` for `plan` on `rank` (exported for tests).
 *
 * @example
 * ```ts ignore
 * import { planDescFields } from "./engine.ts";
 * const fields = planDescFields(plan, 0, { maxTokens: 128 });
 * console.assert(fields.ints.max_tokens === 128);
 * ```
 */
export function planDescFields(
  plan: PlanSpec,
  rank: number,
  options: EngineOptions = {},
): PlanDescFields {
  const maxTokens = options.maxTokens ?? DEFAULT_MAX_TOKENS;
  return {
    ints: {
      world: plan.world,
      rank,
      gpus_per_node: plan.gpusPerNode,
      experts: plan.experts,
      top_k: plan.topK,
      hidden: plan.hidden,
      dtype: Codes.dtype[plan.dtype],
      dedupe: Codes.dedupe[plan.dedupe],
      receive: Codes.receive[plan.receive],
      combine: Codes.combine[plan.combine],
      max_tokens: maxTokens,
      combine_wire_f32: (options.combineWire ?? "dtype") === "f32" ? 1 : 0,
      quantize: Codes.quantize[plan.quantize ?? "none"],
    },
    arrays: {
      local_experts: plan.localExperts,
      slot_base: plan.slotBase,
      slot_expert: plan.slotExpert,
      replica_start: plan.replicaStart,
      replica_slots: plan.replicaSlots,
    },
  };
}

const pointerAt = (address: bigint): Deno.PointerValue => Deno.UnsafePointer.create(address);

/**
 * An engine's native state: its open dispatch handles, and whether a call
 * is running on Deno's thread pool. Frees requested during such a call (by
 * `close()` or by the garbage collector) wait for it to end, so native never
 * sees a handle destroyed under a running dispatch or combine.
 */
class NativeState {
  /** Open handles by address; weak, so the finalizer backstop still works. */
  readonly live: Map<bigint, WeakRef<GpuDispatchHandle>> = new Map();
  busy = false;
  readonly #deferred: bigint[] = [];

  constructor(readonly engine: bigint) {}

  /** Frees handle `address` now, or after the running call. */
  destroyHandle(address: bigint): void {
    if (!this.live.delete(address)) return; // already freed
    if (this.busy) {
      this.#deferred.push(address);
      return;
    }
    unwrap(native().weft_handle_destroy(pointerAt(address)), "weft_handle_destroy");
  }

  /** Frees what waited for the call that just ended. */
  flush(): void {
    for (const address of this.#deferred.splice(0)) {
      unwrap(native().weft_handle_destroy(pointerAt(address)), "weft_handle_destroy");
    }
  }

  /** Frees every handle, then the engine (nothing may be running). */
  destroyAll(): void {
    const failures: unknown[] = [];
    const addresses = [...this.#deferred.splice(0), ...this.live.keys()];
    this.live.clear();
    for (const address of addresses) {
      try {
        unwrap(native().weft_handle_destroy(pointerAt(address)), "weft_handle_destroy");
      } catch (error) {
        failures.push(error);
      }
    }
    unwrap(native().weft_engine_destroy(pointerAt(this.engine)), "weft_engine_destroy");
    if (failures.length > 0) throw failures[0];
  }
}

const handleLeaks = new FinalizationRegistry<{ address: bigint; state: NativeState }>((h) => {
  try {
    h.state.destroyHandle(h.address);
  } catch { /* process exit */ }
});

const engineLeaks = new FinalizationRegistry<NativeState>((state) => {
  try {
    state.destroyAll();
  } catch { /* process exit */ }
});

/**
 * One dispatched batch on this rank: the layout native computed, for
 * combine and re-dispatch. Its `recv` tensor is a view that dies with it.
 */
export class GpuDispatchHandle implements DispatchHandle, ViewOwner {
  /** The one rank this handle's process drives. */
  readonly ranks: readonly number[];
  /** What this is, for messages about views into it. */
  readonly description: string = "dispatch handle";
  /** Tokens this rank dispatched. */
  readonly tokens: number;
  /** Rows this rank received. */
  readonly recvRows: number;
  /** @internal The result dispatch returned (re-dispatch returns it again). */
  readonly result: DispatchResult;
  readonly #engine: Engine;
  readonly #address: bigint;
  readonly #state: NativeState;
  #closed = false;

  /** @internal Built by {@link Engine}. */
  constructor(
    engine: Engine,
    address: bigint,
    state: NativeState,
    info: DispatchInfo,
    read: (h: GpuDispatchHandle) => DispatchResult,
  ) {
    this.#engine = engine;
    this.#address = address;
    this.#state = state;
    this.ranks = engine.ranks;
    this.tokens = info.tokens;
    this.recvRows = info.recvRows;
    state.live.set(address, new WeakRef(this));
    handleLeaks.register(this, { address, state }, this);
    this.result = read(this);
  }

  /** True once closed (directly or by closing its engine). */
  get closed(): boolean {
    return this.#closed || !this.#state.live.has(this.#address);
  }

  /** @internal The native handle, if `engine` owns this handle and it is open. */
  pointerFor(engine: Engine): Deno.PointerValue {
    if (engine !== this.#engine) {
      throw new WeftError({
        field: "handle",
        rank: engine.rank,
        problem: "belongs to another engine",
        fix: "pass the handle returned by this engine's dispatch",
      });
    }
    if (this.closed) {
      throw new WeftError({
        field: "handle",
        rank: engine.rank,
        problem: "is closed",
        fix: "combine or re-dispatch before closing the handle (or its engine)",
      });
    }
    return Deno.UnsafePointer.create(this.#address);
  }

  /** Frees the layout and the receive buffer (its `recv` view dies). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    handleLeaks.unregister(this);
    this.#state.destroyHandle(this.#address);
  }

  /** Same as {@link GpuDispatchHandle.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Where pre-quantized rows' parts are for a native call. */
interface QuantizedAt {
  readonly q: Deno.PointerValue;
  readonly scales: Deno.PointerValue;
  readonly keepAlive: unknown;
}

/** Where rows are for a native call; `host` when they are a host copy. */
interface RowsAt {
  readonly pointer: Deno.PointerValue;
  readonly onDevice: 0 | 1;
  readonly keepAlive: unknown;
  /** A tensor's host copy is checked against its advertised shape, so any array may come back. */
  readonly host?: HostArray;
}

/** Where the routing is for a native call, and what must stay alive around it. */
interface RoutingAt {
  readonly idx: Deno.PointerValue;
  readonly weights: Deno.PointerValue;
  readonly keepAlive: readonly unknown[];
}

/** Pointers for one native call, and what must stay alive (or be freed) around it. */
interface Prepared {
  /** x's rows, or with `scales` set the pre-quantized bytes q. */
  readonly x: Deno.PointerValue;
  /** The block scales of pre-quantized rows; undefined for rows in the dtype. */
  readonly scales?: Deno.PointerValue;
  readonly idx: Deno.PointerValue;
  readonly weights: Deno.PointerValue;
  readonly tokens: number;
  readonly onDevice: 0 | 1;
  readonly keepAlive: readonly unknown[];
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
  readonly #state: NativeState;
  readonly #release: () => void;
  #handle: Deno.PointerValue;
  #closeWhenIdle = false;
  // Host staging of the routing, page-locked for the engine's life
  // (weft_engine_pin_host): [maxTokens × K] int32 ids, then as many f32 weights.
  readonly #routingIdx: Int32Array;
  readonly #routingWeights: Float32Array;

  private constructor(
    plan: PlanSpec,
    comm: Communicator,
    handle: Deno.PointerValue,
    maxTokens: number,
  ) {
    this.plan = plan;
    this.#comm = comm;
    this.rank = comm.rank;
    this.device = comm.localRank;
    this.ranks = Object.freeze([comm.rank]);
    this.maxTokens = maxTokens;
    this.#handle = handle;
    const pairs = maxTokens * plan.topK;
    const routing = new ArrayBuffer(pairs * 8);
    this.#routingIdx = new Int32Array(routing, 0, pairs);
    this.#routingWeights = new Float32Array(routing, pairs * 4, pairs);
    // Without page-locking (refused by the system) the copies still work, through a CPU bounce.
    native().weft_engine_pin_host(handle, new Uint8Array(routing), BigInt(routing.byteLength));
    this.#state = new NativeState(Deno.UnsafePointer.value(handle!));
    engineLeaks.register(this, this.#state, this);
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
    const { bytes, keepAlive } = packPlanDesc(planDescFields(plan, options.rank ?? 0, options));
    const out = new BigUint64Array(1);
    unwrap(native().weft_engine_heap_bytes(bytes, out), "weft_engine_heap_bytes", {
      field: "plan",
    });
    void keepAlive;
    return Number(out[0]);
  }

  /** Builds this rank's engine for `plan` on `communicator` (not collective). */
  static create(
    plan: PlanSpec,
    communicator: Communicator,
    options: EngineOptions = {},
  ): Promise<Engine> {
    const rank = communicator.rank;
    const maxTokens = options.maxTokens ?? DEFAULT_MAX_TOKENS;
    if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > 2 ** 31 - 1) {
      throw new WeftError({
        field: "maxTokens",
        rank,
        problem: `is ${maxTokens}`,
        fix: "pass an integer ≥ 1",
      });
    }
    if (
      options.combineWire !== undefined && options.combineWire !== "dtype" &&
      options.combineWire !== "f32"
    ) {
      throw new WeftError({
        field: "combineWire",
        rank,
        problem: `is "${options.combineWire}"`,
        fix: 'pass "dtype" or "f32"',
      });
    }
    if (plan.world !== communicator.world) {
      throw new WeftError({
        field: "plan.world",
        rank,
        problem: `is ${plan.world}, but the communicator has ${communicator.world} ranks`,
        fix: "compile the plan with { world: communicator.world }",
      });
    }
    const needed = Engine.heapBytes(plan, { ...options, rank });
    if (needed > communicator.heapBytes) {
      throw new WeftError({
        field: "heapBytes",
        rank,
        problem:
          `the communicator's heap has ${communicator.heapBytes} bytes; this plan with maxTokens ${maxTokens} needs ${needed}`,
        fix:
          "create the Communicator with heapBytes ≥ Engine.heapBytes(plan, { maxTokens }), or lower maxTokens",
      });
    }
    const { bytes, keepAlive } = packPlanDesc(planDescFields(plan, rank, options));
    const out = new BigUint64Array(1);
    unwrap(
      native().weft_engine_create(communicator.nativeHandle, bytes, out),
      "weft_engine_create",
      { rank, field: "plan" },
    );
    void keepAlive;
    return Promise.resolve(new Engine(plan, communicator, readPointer(out), maxTokens));
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
  async dispatch(inputs: readonly RankInput[]): Promise<Dispatched> {
    const engine = this.#enter();
    let prepared: Prepared | undefined;
    try {
      try {
        prepared = await this.#prepareDispatch(inputs);
      } catch (hostError) {
        await this.#rejectOnEveryRank(engine);
        throw hostError;
      }
      const p = prepared;
      // The first half only enqueues (it never waits), so it runs on this
      // thread: the layout starts on the GPU now, while the second half,
      // which waits for its counts, makes the hop to Deno's thread pool.
      const began = p.scales === undefined
        ? native().weft_dispatch_begin(engine, p.x, p.idx, p.weights, p.tokens)
        : native().weft_dispatch_begin_e4m3(engine, p.x, p.scales, p.idx, p.weights, p.tokens);
      unwrap(began, "weft_dispatch_begin", { rank: this.rank });
      const out = new BigUint64Array(1);
      const status = await holding(
        [p, out],
        () => native().weft_dispatch_finish(engine, out),
      );
      unwrap(status, "weft_dispatch_finish", { rank: this.rank });
      const handle = this.#wrap(readPointer(out), prepared.tokens);
      return { results: [handle.result], handle };
    } finally {
      this.#leave();
    }
  }

  /**
   * The layout step of dispatch alone (`weft_dispatch_layout`): stages this
   * rank's routing (host arrays or tensors, as {@link Engine.dispatch} takes
   * them), checks it on the device, generates the indices and allocates the
   * outputs, moving no rows. {@link redispatch} then moves them; layout +
   * redispatch give exactly what dispatch gives. Collective.
   */
  async layout(routing: readonly RoutingInput[]): Promise<GpuDispatchHandle> {
    const engine = this.#enter();
    try {
      let at: RoutingAt, tokens: number;
      try {
        const r = this.#one("routing", routing);
        tokens = checkRankShapes(this.plan, this.rank, {
          topkIdx: r.topkIdx,
          topkWeights: r.topkWeights,
        });
        this.#checkCapacity(tokens);
        at = await this.#routingPointers(r);
      } catch (hostError) {
        await this.#rejectOnEveryRank(engine);
        throw hostError;
      }
      const out = new BigUint64Array(1);
      const status = await holding(
        [at.keepAlive, out],
        () => native().weft_dispatch_layout(engine, at.idx, at.weights, tokens, out),
      );
      unwrap(status, "weft_dispatch_layout", { rank: this.rank });
      return this.#wrap(readPointer(out), tokens);
    } finally {
      this.#leave();
    }
  }

  /**
   * Sends new rows through a dispatched batch's layout (same routing, no
   * layout work). The rows land in the handle's receive buffer, so the
   * `recv` view of the original dispatch shows them too.
   */
  async redispatch(
    handle: DispatchHandle,
    xs: readonly (HostRows | Tensor | QuantizedInput)[],
  ): Promise<Dispatched> {
    this.#enter();
    try {
      const h = this.#own(handle);
      const nativeHandle = h.pointerFor(this);
      let rows: RowsAt | QuantizedAt;
      try {
        const x = this.#one("xs", xs);
        checkInputRows(this.plan, this.rank, "xs", shapeOf(x), h.tokens);
        rows = isQuantizedInput(x)
          ? await this.#quantizedPointers("xs", x, h.tokens)
          : await this.#rowsPointer("xs", x);
      } catch (hostError) {
        // NULL rows for a handle with tokens fail the call on every rank.
        await holding([], () => native().weft_redispatch(nativeHandle, null, 0));
        throw hostError;
      }
      const r = rows;
      const status = await holding(
        [r.keepAlive],
        () =>
          "scales" in r
            ? native().weft_redispatch_e4m3(nativeHandle, r.q, r.scales)
            : native().weft_redispatch(nativeHandle, r.pointer, r.onDevice),
      );
      unwrap(status, "weft_redispatch", { rank: this.rank });
      this.#settleOnRead(h.result.recv);
      if (h.result.recvScales !== undefined) this.#settleOnRead(h.result.recvScales);
      return { results: [h.result], handle: h };
    } finally {
      this.#leave();
    }
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
  async combine(
    handle: DispatchHandle,
    ys: readonly (HostRows | Tensor)[],
    options: { readonly out?: readonly DeviceTensor[] } = {},
  ): Promise<DeviceTensor<DType>[]> {
    this.#enter();
    const temporaries: DeviceTensor[] = [];
    let allocated: DeviceTensor<DType> | undefined;
    try {
      const h = this.#own(handle);
      const nativeHandle = h.pointerFor(this);
      let y: HostRows | Tensor;
      let yPointer: Deno.PointerValue;
      let out: DeviceTensor<DType>;
      try {
        y = this.#one("ys", ys);
        checkRows(this.plan, this.rank, "ys", shapeOf(y), h.recvRows);
        const { pointer, host } = await this.#rowsPointer("ys", y);
        yPointer = pointer;
        if (host !== undefined) {
          // weft_combine takes device y only.
          const t = DeviceTensor.upload(
            this.device,
            this.plan.dtype,
            h.recvRows,
            this.plan.hidden,
            host,
          );
          temporaries.push(t);
          yPointer = t.pointer;
        }
        out = options.out === undefined
          ? (allocated = DeviceTensor.alloc(
            this.device,
            this.plan.dtype,
            h.tokens,
            this.plan.hidden,
          ))
          : this.#checkOut(options.out, h.tokens);
      } catch (hostError) {
        await holding([], () => native().weft_combine(nativeHandle, null, null));
        throw hostError;
      }
      const status = await holding(
        [y, out, temporaries],
        () => native().weft_combine(nativeHandle, yPointer, out.pointer),
      );
      unwrap(status, "weft_combine", { rank: this.rank });
      this.#settleOnRead(out);
      return [out];
    } catch (error) {
      allocated?.close();
      throw error;
    } finally {
      for (const t of temporaries) t.close();
      this.#leave();
    }
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
    this.#checkTokens(tokens);
    const handle = this.#openHandle();
    const out = new BigUint64Array(1);
    unwrap(native().weft_engine_input_rows(handle, out), "weft_engine_input_rows", {
      rank: this.rank,
    });
    return DeviceTensor.view(
      this.device,
      this.plan.dtype,
      tokens,
      this.plan.hidden,
      readPointer(out),
      this.#viewOwner(),
    );
  }

  /** The native engine, or a WeftError once closed. */
  #openHandle(): Deno.PointerValue {
    if (this.#handle === null) {
      throw new WeftError({
        field: "engine",
        rank: this.rank,
        problem: "is closed",
        fix: "create a new Engine",
      });
    }
    return this.#handle;
  }

  /** The owner of views into this engine's heap: they die with the engine. */
  #viewOwner(): ViewOwner {
    const isClosed = () => this.#handle === null;
    return {
      get closed() {
        return isClosed();
      },
      description: "weft engine",
    };
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
    this.#checkTokens(tokens);
    const handle = this.#openHandle();
    if (this.plan.quantize !== "e4m3") {
      throw new WeftError({
        field: "plan.quantize",
        rank: this.rank,
        problem: "is not set: this engine sends rows in their dtype",
        fix: 'compile the pattern with .quantize("e4m3"), or write rows to Engine.inputRows',
      });
    }
    const q = new BigUint64Array(1);
    const scales = new BigUint64Array(1);
    unwrap(native().weft_engine_input_e4m3(handle, q, scales), "weft_engine_input_e4m3", {
      rank: this.rank,
    });
    const owner = this.#viewOwner();
    const H = this.plan.hidden;
    return {
      q: DeviceTensor.view(this.device, "e4m3", tokens, H, readPointer(q), owner),
      scales: DeviceTensor.view(
        this.device,
        "f32",
        tokens,
        H / QUANT_BLOCK,
        readPointer(scales),
        owner,
      ),
    };
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
    this.#checkTokens(tokens);
    const n = tokens * this.plan.topK;
    return {
      topkIdx: this.#routingIdx.subarray(0, n),
      topkWeights: this.#routingWeights.subarray(0, n),
    };
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
    if (this.#handle === null) return;
    if (this.#state.busy) {
      this.#closeWhenIdle = true;
      return;
    }
    this.#handle = null;
    engineLeaks.unregister(this);
    this.#release();
    this.#state.destroyAll();
  }

  /** Same as {@link Engine.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  // ---------------------------------------------------------------- internals

  #enter(): Deno.PointerValue {
    if (this.#handle === null || this.#closeWhenIdle) {
      throw new WeftError({
        field: "engine",
        rank: this.rank,
        problem: "is closed",
        fix: "create a new Engine",
      });
    }
    if (this.#state.busy) {
      throw new WeftError({
        field: "engine",
        rank: this.rank,
        problem: "another dispatch, re-dispatch or combine is still running",
        fix:
          "await each call before starting the next: they are collective and run in the same order on every rank",
      });
    }
    this.#state.busy = true;
    return this.#handle;
  }

  #leave(): void {
    this.#state.busy = false;
    this.#state.flush();
    if (this.#closeWhenIdle) {
      this.#closeWhenIdle = false;
      this.close();
    }
  }

  #one<T>(field: string, list: readonly T[]): T {
    if (!Array.isArray(list) || list.length !== 1) {
      throw new WeftError({
        field,
        rank: this.rank,
        problem: `expected one entry (this process drives rank ${this.rank} only), got ${
          Array.isArray(list) ? list.length : typeof list
        }`,
        fix: "pass a one-element array with this rank's data",
      });
    }
    return list[0];
  }

  #own(handle: DispatchHandle): GpuDispatchHandle {
    if (!(handle instanceof GpuDispatchHandle)) {
      throw new WeftError({
        field: "handle",
        rank: this.rank,
        problem: "is not a GPU dispatch handle",
        fix: "pass the handle returned by this engine's dispatch",
      });
    }
    return handle;
  }

  async #prepareDispatch(inputs: readonly RankInput[]): Promise<Prepared> {
    const input = this.#one("inputs", inputs);
    // Shapes on the host; values (expert range, duplicates, NaN weights) on
    // the device, where the check is free and still names position and rank.
    const tokens = checkRankShapes(this.plan, this.rank, {
      x: shapeOf(input.x),
      topkIdx: input.topkIdx,
      topkWeights: input.topkWeights,
    });
    this.#checkCapacity(tokens);
    const at = await this.#routingPointers(input);
    const routing = { idx: at.idx, weights: at.weights, tokens };
    if (isQuantizedInput(input.x)) {
      const { q, scales, keepAlive } = await this.#quantizedPointers("x", input.x, tokens);
      return { ...routing, x: q, scales, onDevice: 1, keepAlive: [keepAlive, at.keepAlive] };
    }
    const { pointer, onDevice, keepAlive } = await this.#rowsPointer("x", input.x);
    return { ...routing, x: pointer, onDevice, keepAlive: [keepAlive, at.keepAlive] };
  }

  /**
   * Where this rank's routing is for a native call (its shapes already
   * checked). Native copies each input with cudaMemcpyDefault into its own
   * buffers, so device and host parts mix freely: a DeviceTensor on this GPU
   * is passed as its device pointer (a device-to-device copy, no host round
   * trip); anything else comes from the page-locked staging, so it reaches
   * the GPU by DMA (and no per-call device allocation, whose free would
   * synchronize the GPU, is made).
   */
  async #routingPointers(routing: RoutingInput): Promise<RoutingAt> {
    const idx = await this.#routingPart("topkIdx", routing.topkIdx);
    const weights = await this.#routingPart("topkWeights", routing.topkWeights);
    return {
      idx: idx.pointer,
      weights: weights.pointer,
      keepAlive: [idx.keepAlive, weights.keepAlive],
    };
  }

  /** One routing part: a device tensor of this GPU as it is; anything else staged from the host. */
  async #routingPart(
    field: "topkIdx" | "topkWeights",
    part: Int32Array | Float32Array | Tensor<"i32"> | Tensor<"f32">,
  ): Promise<{ pointer: Deno.PointerValue; keepAlive: unknown }> {
    if (part instanceof DeviceTensor && part.deviceIndex === this.device) {
      return { pointer: part.pointer, keepAlive: part };
    }
    let host: Int32Array | Float32Array;
    if (ArrayBuffer.isView(part)) {
      host = part;
    } else {
      host = await part.read();
      // A tensor's host copy must match the shape it advertised.
      checkRoutingShape(this.plan, this.rank, field, host, part.rows);
    }
    const staged = this.#stageRouting(field, host);
    return { pointer: hostPointer(staged), keepAlive: staged };
  }

  /** Where pre-quantized rows' parts live for a native call (each on this GPU, else on the host). */
  async #quantizedPointers(
    field: string,
    x: QuantizedInput,
    rows: number,
  ): Promise<QuantizedAt> {
    const q = await this.#placed(x.q);
    const scales = await this.#placed(x.scales);
    if (q.host !== undefined || scales.host !== undefined) {
      // Host copies of tensors must match the shapes they advertised.
      checkInputRows(this.plan, this.rank, field, {
        q: (q.host as Uint8Array | undefined) ?? shapeOf(x.q as Tensor) as RowsShape,
        scales: (scales.host as Float32Array | undefined) ??
          shapeOf(x.scales as Tensor) as RowsShape,
      }, rows);
    }
    return { q: q.pointer, scales: scales.pointer, keepAlive: [q.keepAlive, scales.keepAlive] };
  }

  /** Where rows live for a native call: this GPU as they are, else the host. */
  async #rowsPointer(
    field: string,
    x: HostRows | Tensor,
  ): Promise<RowsAt> {
    const at = await this.#placed(x);
    // A tensor's host copy must match the shape it advertised.
    if (at.host !== undefined) {
      checkRows(this.plan, this.rank, field, at.host, ArrayBuffer.isView(x) ? undefined : x.rows);
    }
    return at;
  }

  /** A device tensor of this GPU as it is; anything else as a stable host copy. */
  async #placed(x: HostRows | Tensor): Promise<RowsAt> {
    if (x instanceof DeviceTensor && x.deviceIndex === this.device) {
      return { pointer: x.pointer, onDevice: 1, keepAlive: x };
    }
    const stable = stableCopy(ArrayBuffer.isView(x) ? x : await x.read());
    return { pointer: hostPointer(stable), onDevice: 0, keepAlive: stable, host: stable };
  }

  /**
   * Enters the collective with a batch the device check rejects, so every
   * peer fails together with this rank instead of waiting for it.
   */
  async #rejectOnEveryRank(engine: Deno.PointerValue): Promise<void> {
    const { topK: K, hidden: H, dtype, experts } = this.plan;
    const x = dtype === "f32"
      ? new Float32Array(new ArrayBuffer(H * 4))
      : new Uint16Array(new ArrayBuffer(H * 2));
    const idx = new Int32Array(new ArrayBuffer(K * 4)).fill(-1);
    idx[0] = experts; // one past the last expert: out of range by construction
    const weights = new Float32Array(new ArrayBuffer(K * 4));
    const out = new BigUint64Array(1);
    const status = await holding(
      [x, idx, weights, out],
      () =>
        native().weft_dispatch(
          engine,
          hostPointer(x),
          hostPointer(idx),
          hostPointer(weights),
          1,
          0,
          out,
        ),
    );
    if (status === Status.OK) {
      // The device check did not fire (it should): do not leak the handle.
      native().weft_handle_destroy(readPointer(out));
    }
  }

  #wrap(pointer: Deno.PointerValue, tokens: number): GpuDispatchHandle {
    const raw = new Uint8Array(DISPATCH_INFO.bytes);
    const infoStatus = native().weft_handle_info(pointer, raw);
    if (infoStatus !== Status.OK) {
      const error = nativeError(infoStatus, "weft_handle_info", "", { rank: this.rank });
      native().weft_handle_destroy(pointer);
      throw error;
    }
    const info = decodeDispatchInfo(raw);
    const local = this.plan.localExperts[this.rank];
    if (info.tokens !== tokens || info.localExperts !== local || info.recvRows < 0) {
      native().weft_handle_destroy(pointer);
      throw new WeftError({
        field: "weft_handle_info",
        rank: this.rank,
        problem:
          `native reports tokens ${info.tokens}, local experts ${info.localExperts}, rows ${info.recvRows}; expected tokens ${tokens}, local experts ${local}`,
        fix: "the native library and lib/ffi.ts disagree: rebuild with `deno task build`",
      });
    }
    return new GpuDispatchHandle(
      this,
      Deno.UnsafePointer.value(pointer!),
      this.#state,
      info,
      (h) => {
        const lazy = {
          expertCounts: () => this.#readInt32(info.expertCounts, info.localExperts),
          recvWeights: () =>
            new Float32Array(this.#readInt32(info.recvWeights, info.recvRows).buffer),
          srcRank: () => this.#readInt32(info.srcRank, info.recvRows),
          srcToken: () => this.#readInt32(info.srcToken, info.recvRows),
          srcK: () => this.#readInt32(info.srcK, info.recvRows),
        };
        const quantized = this.plan.quantize === "e4m3";
        const recv = DeviceTensor.view(
          this.device,
          quantized ? "e4m3" : this.plan.dtype,
          info.recvRows,
          this.plan.hidden,
          info.recv,
          h,
        );
        this.#settleOnRead(recv);
        const base: Pick<DispatchResult, "rank" | "recv" | "recvScales"> = {
          rank: this.rank,
          recv,
        };
        if (quantized) {
          const recvScales = DeviceTensor.view(
            this.device,
            "f32",
            info.recvRows,
            this.plan.hidden / QUANT_BLOCK,
            info.recvScales,
            h,
          );
          this.#settleOnRead(recvScales);
          return withLazyMetadata({ ...base, recvScales }, lazy);
        }
        return withLazyMetadata(base, lazy);
      },
    );
  }

  /** A batch of `tokens` fits this engine's buffers. */
  #checkCapacity(tokens: number): void {
    if (tokens > this.maxTokens) {
      throw new WeftError({
        field: "tokens",
        rank: this.rank,
        problem: `${tokens} tokens exceed the engine's maxTokens ${this.maxTokens}`,
        fix: `create the Engine with { maxTokens: ${tokens} } or more, or split the batch`,
      });
    }
  }

  #checkTokens(tokens: number): void {
    if (!Number.isInteger(tokens) || tokens < 0 || tokens > this.maxTokens) {
      throw new WeftError({
        field: "tokens",
        rank: this.rank,
        problem: `is ${tokens}`,
        fix: `pass an integer in 0…${this.maxTokens} (the engine's maxTokens)`,
      });
    }
  }

  /**
   * One routing part in the page-locked staging (copied there unless it
   * already is), so native copies it to the GPU by DMA. The engine runs one
   * call at a time and each call's copies finish before it returns, so one
   * staging area serves every call. `host` is of the field's array type and
   * length (checked before).
   */
  #stageRouting(
    field: "topkIdx" | "topkWeights",
    host: Int32Array | Float32Array,
  ): ArrayBufferView {
    const staging = field === "topkIdx" ? this.#routingIdx : this.#routingWeights;
    const staged = staging.subarray(0, host.length);
    if (host.buffer !== staged.buffer || host.byteOffset !== staged.byteOffset) staged.set(host);
    return staged;
  }

  /** The rows are still being written on the comm stream: a read settles the call first. */
  #settleOnRead(t: Tensor): void {
    if (t instanceof DeviceTensor) t.settleBeforeRead(() => this.synchronize());
  }

  /** Copies `n` 4-byte values from device memory (weights travel as their bits). */
  #readInt32(pointer: Deno.PointerValue, n: number): Int32Array {
    const out = new Int32Array(new ArrayBuffer(n * 4));
    if (n > 0) {
      unwrap(native().weft_copy_d2h(this.device, out, pointer, BigInt(n * 4)), "weft_copy_d2h", {
        rank: this.rank,
      });
    }
    return out;
  }

  #checkOut(outs: readonly DeviceTensor[], tokens: number): DeviceTensor<DType> {
    const out = this.#one("out", outs);
    const { dtype, hidden } = this.plan;
    if (
      !(out instanceof DeviceTensor) || out.deviceIndex !== this.device || out.dtype !== dtype ||
      out.rows !== tokens || out.cols !== hidden
    ) {
      throw new WeftError({
        field: "out",
        rank: this.rank,
        problem: `expected a ${dtype} DeviceTensor of ${tokens}×${hidden} on cuda:${this.device}`,
        fix:
          "pass DeviceTensor.alloc(device, plan.dtype, tokens, plan.hidden), or leave out to let combine allocate",
      });
    }
    // Checked above: its dtype is the plan's.
    return out as DeviceTensor<DType>;
  }
}

/** The shape checks need; a Tensor is checked by its advertised shape. */
function shapeOf(x: HostRows | Tensor): HostRows | RowsShape;
function shapeOf(x: HostRows | Tensor | QuantizedInput): HostRows | RowsShape | QuantizedShape;
function shapeOf(x: HostRows | Tensor | QuantizedInput): HostRows | RowsShape | QuantizedShape {
  if (isQuantizedInput(x)) {
    return {
      q: shapeOf(x.q) as Uint8Array | RowsShape,
      scales: shapeOf(x.scales) as Float32Array | RowsShape,
    };
  }
  return ArrayBuffer.isView(x) ? x as HostRows : { rows: x.rows, cols: x.cols, dtype: x.dtype };
}

type Metadata = Pick<
  DispatchResult,
  "expertCounts" | "recvWeights" | "srcRank" | "srcToken" | "srcK"
>;

/**
 * Completes a DispatchResult whose metadata stays on the device until first
 * read (then cached): a training step that feeds recv and the device-side
 * counts to its kernels pays no copy back, and no synchronizing copy sits
 * inside the timed dispatch.
 */
function withLazyMetadata(
  base: Pick<DispatchResult, "rank" | "recv" | "recvScales">,
  read: { readonly [K in keyof Metadata]: () => Metadata[K] },
): DispatchResult {
  const out = { ...base } as DispatchResult;
  for (const key of Object.keys(read) as (keyof Metadata)[]) {
    let cached: Metadata[typeof key] | undefined;
    Object.defineProperty(out, key, {
      enumerable: true,
      get: () => (cached ??= read[key]()),
    });
  }
  return out;
}
