/**
 * This rank's inputs on their way into native: the staging native reads
 * them from (the heap's rows, the page-locked routing), where each input is
 * for a native call (a tensor of this GPU as it is, anything else as a
 * stable host copy), and their host-side shape checks.
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import type {
  HostArray,
  HostRows,
  QuantizedInput,
  RankInput,
  RankRouting,
  RoutingInput,
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
import { native } from "../native/loader.ts";
import { unwrap } from "../native/status.ts";
import { hostPointer, readPointer, stableCopy } from "../native/pointers.ts";
import { DeviceTensor, type ViewOwner } from "./device_tensor.ts";

/** What the inputs need of their engine. */
export interface InputEngine {
  /** The engine's plan. */
  readonly plan: PlanSpec;
  /** This process's rank. */
  readonly rank: number;
  /** The CUDA device index. */
  readonly device: number;
  /** Most tokens one dispatch accepts. */
  readonly maxTokens: number;
}

/** Where rows are for a native call, and what must stay alive around it. */
export interface RowsAt {
  /** The rows (device or host address). */
  readonly pointer: Deno.PointerValue;
  /** What the pointer points into. */
  readonly keepAlive: unknown;
  /** The host copy, when the rows are not on this GPU. */
  readonly host?: HostArray;
}

/** Where pre-quantized rows' parts are for a native call. */
export interface QuantizedAt {
  /** The e4m3 bytes. */
  readonly q: Deno.PointerValue;
  /** Their block scales. */
  readonly scales: Deno.PointerValue;
  /** What the pointers point into. */
  readonly keepAlive: unknown;
}

/** Where the routing is for a native call, and what must stay alive around it. */
export interface RoutingAt {
  /** topkIdx (device, or the page-locked staging). */
  readonly idx: Deno.PointerValue;
  /** topkWeights (device, or the page-locked staging). */
  readonly weights: Deno.PointerValue;
  /** What the pointers point into. */
  readonly keepAlive: readonly unknown[];
}

/** Pointers for one dispatch, and what must stay alive around it. */
export interface PreparedDispatch extends RoutingAt {
  /** x's rows, or with `scales` set the pre-quantized bytes q. */
  readonly x: Deno.PointerValue;
  /** The block scales of pre-quantized rows; undefined for rows in the dtype. */
  readonly scales?: Deno.PointerValue;
  /** This rank's token count. */
  readonly tokens: number;
}

/**
 * The one entry of a per-rank list (a GPU process drives one rank).
 *
 * @example
 * ```ts
 * import { one } from "./inputs.ts";
 * console.assert(one(0, "xs", [7]) === 7);
 * ```
 */
export function one<T>(rank: number, field: string, list: readonly T[]): T {
  if (!Array.isArray(list) || list.length !== 1) {
    throw new WeftError({
      field,
      rank,
      problem: `expected one entry (this process drives rank ${rank} only), got ${
        Array.isArray(list) ? list.length : typeof list
      }`,
      fix: "pass a one-element array with this rank's data",
    });
  }
  return list[0];
}

/**
 * The shape the checks need; a Tensor is checked by its advertised shape.
 *
 * @example
 * ```ts
 * import { shapeOf } from "./inputs.ts";
 * const t = { rows: 2, cols: 4, dtype: "f32" as const, device: "host", read: () => Promise.resolve(new Float32Array(8)) };
 * console.assert((shapeOf(t) as { rows: number }).rows === 2);
 * ```
 */
export function shapeOf(x: HostRows | Tensor): HostRows | RowsShape;
/** The shape of rows, or of each part of pre-quantized rows. */
export function shapeOf(
  x: HostRows | Tensor | QuantizedInput,
): HostRows | RowsShape | QuantizedShape;
export function shapeOf(
  x: HostRows | Tensor | QuantizedInput,
): HostRows | RowsShape | QuantizedShape {
  if (isQuantizedInput(x)) {
    return {
      q: shapeOf(x.q) as Uint8Array | RowsShape,
      scales: shapeOf(x.scales) as Float32Array | RowsShape,
    };
  }
  return ArrayBuffer.isView(x) ? x as HostRows : { rows: x.rows, cols: x.cols, dtype: x.dtype };
}

/**
 * One engine's inputs: the staging it owns and the placing of each input
 * for a native call.
 */
export class RankInputs {
  readonly #engine: InputEngine;
  // Host staging of the routing, page-locked for the engine's life
  // (weft_engine_pin_host): [maxTokens × K] int32 ids, then as many f32 weights.
  readonly #routingIdx: Int32Array;
  readonly #routingWeights: Float32Array;

  /** Stages for `engine`, pinning the routing staging with the native engine `nativeEngine`. */
  constructor(engine: InputEngine, nativeEngine: Deno.PointerValue) {
    this.#engine = engine;
    const pairs = engine.maxTokens * engine.plan.topK;
    const routing = new ArrayBuffer(pairs * 8);
    this.#routingIdx = new Int32Array(routing, 0, pairs);
    this.#routingWeights = new Float32Array(routing, pairs * 4, pairs);
    // Without page-locking (refused by the system) the copies still work, through a CPU bounce.
    native().weft_engine_pin_host(
      nativeEngine,
      new Uint8Array(routing),
      BigInt(routing.byteLength),
    );
  }

  /** `Engine.inputRows` (engine.ts). */
  rows(nativeEngine: Deno.PointerValue, tokens: number, owner: ViewOwner): DeviceTensor<DType> {
    const { plan, rank, device } = this.#engine;
    this.#checkTokens(tokens);
    const out = new BigUint64Array(1);
    unwrap(native().weft_engine_input_rows(nativeEngine, out), "weft_engine_input_rows", { rank });
    return DeviceTensor.view(device, plan.dtype, tokens, plan.hidden, readPointer(out), owner);
  }

  /** `Engine.inputQuantizedRows` (engine.ts). */
  quantizedRows(
    nativeEngine: Deno.PointerValue,
    tokens: number,
    owner: ViewOwner,
  ): { q: DeviceTensor<"e4m3">; scales: DeviceTensor<"f32"> } {
    const { plan, rank, device } = this.#engine;
    this.#checkTokens(tokens);
    if (plan.quantize !== "e4m3") {
      throw new WeftError({
        field: "plan.quantize",
        rank,
        problem: "is not set: this engine sends rows in their dtype",
        fix: 'compile the pattern with .quantize("e4m3"), or write rows to Engine.inputRows',
      });
    }
    const q = new BigUint64Array(1);
    const scales = new BigUint64Array(1);
    unwrap(native().weft_engine_input_e4m3(nativeEngine, q, scales), "weft_engine_input_e4m3", {
      rank,
    });
    const H = plan.hidden;
    return {
      q: DeviceTensor.view(device, "e4m3", tokens, H, readPointer(q), owner),
      scales: DeviceTensor.view(device, "f32", tokens, H / QUANT_BLOCK, readPointer(scales), owner),
    };
  }

  /** `Engine.inputRouting` (engine.ts). */
  routing(tokens: number): RankRouting {
    this.#checkTokens(tokens);
    const n = tokens * this.#engine.plan.topK;
    return {
      topkIdx: this.#routingIdx.subarray(0, n),
      topkWeights: this.#routingWeights.subarray(0, n),
    };
  }

  /** A dispatch's inputs, checked (shapes here, values on the device) and placed. */
  async dispatch(inputs: readonly RankInput[]): Promise<PreparedDispatch> {
    const { plan, rank } = this.#engine;
    const input = one(rank, "inputs", inputs);
    // Shapes on the host; values (expert range, duplicates, NaN weights) on
    // the device, where the check is free and still names position and rank.
    const tokens = checkRankShapes(plan, rank, {
      x: shapeOf(input.x),
      topkIdx: input.topkIdx,
      topkWeights: input.topkWeights,
    });
    this.#checkCapacity(tokens);
    const at = await this.#routingPointers(input);
    if (isQuantizedInput(input.x)) {
      const { q, scales, keepAlive } = await this.#quantizedPointers("x", input.x, tokens);
      return { ...at, x: q, scales, tokens, keepAlive: [keepAlive, at.keepAlive] };
    }
    const { pointer, keepAlive } = await this.rowsPointer("x", input.x);
    return { ...at, x: pointer, tokens, keepAlive: [keepAlive, at.keepAlive] };
  }

  /** A layout's routing, checked and placed. */
  async layout(routing: readonly RoutingInput[]): Promise<RoutingAt & { tokens: number }> {
    const { plan, rank } = this.#engine;
    const r = one(rank, "routing", routing);
    const tokens = checkRankShapes(plan, rank, { topkIdx: r.topkIdx, topkWeights: r.topkWeights });
    this.#checkCapacity(tokens);
    return { ...await this.#routingPointers(r), tokens };
  }

  /** A re-dispatch's rows for a handle of `tokens`, checked and placed. */
  async redispatch(
    xs: readonly (HostRows | Tensor | QuantizedInput)[],
    tokens: number,
  ): Promise<RowsAt | QuantizedAt> {
    const { plan, rank } = this.#engine;
    const x = one(rank, "xs", xs);
    checkInputRows(plan, rank, "xs", shapeOf(x), tokens);
    return isQuantizedInput(x)
      ? await this.#quantizedPointers("xs", x, tokens)
      : await this.rowsPointer("xs", x);
  }

  /** Where rows live for a native call: this GPU as they are, else the host (checked there). */
  async rowsPointer(field: string, x: HostRows | Tensor): Promise<RowsAt> {
    const { plan, rank } = this.#engine;
    const at = await this.#placed(x);
    // A tensor's host copy must match the shape it advertised.
    if (at.host !== undefined) {
      checkRows(plan, rank, field, at.host, ArrayBuffer.isView(x) ? undefined : x.rows);
    }
    return at;
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
    const { plan, rank, device } = this.#engine;
    if (part instanceof DeviceTensor && part.deviceIndex === device) {
      return { pointer: part.pointer, keepAlive: part };
    }
    let host: Int32Array | Float32Array;
    if (ArrayBuffer.isView(part)) {
      host = part;
    } else {
      host = await part.read();
      // A tensor's host copy must match the shape it advertised.
      checkRoutingShape(plan, rank, field, host, part.rows);
    }
    const staged = this.#stageRouting(field, host);
    return { pointer: hostPointer(staged), keepAlive: staged };
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

  /** Where pre-quantized rows' parts live for a native call (each on this GPU, else on the host). */
  async #quantizedPointers(field: string, x: QuantizedInput, rows: number): Promise<QuantizedAt> {
    const { plan, rank } = this.#engine;
    const q = await this.#placed(x.q);
    const scales = await this.#placed(x.scales);
    if (q.host !== undefined || scales.host !== undefined) {
      // Host copies of tensors must match the shapes they advertised.
      checkInputRows(plan, rank, field, {
        q: (q.host as Uint8Array | undefined) ?? shapeOf(x.q as Tensor) as RowsShape,
        scales: (scales.host as Float32Array | undefined) ??
          shapeOf(x.scales as Tensor) as RowsShape,
      }, rows);
    }
    return { q: q.pointer, scales: scales.pointer, keepAlive: [q.keepAlive, scales.keepAlive] };
  }

  /** A device tensor of this GPU as it is; anything else as a stable host copy. */
  async #placed(x: HostRows | Tensor): Promise<RowsAt> {
    if (x instanceof DeviceTensor && x.deviceIndex === this.#engine.device) {
      return { pointer: x.pointer, keepAlive: x };
    }
    const stable = stableCopy(ArrayBuffer.isView(x) ? x : await x.read());
    return { pointer: hostPointer(stable), keepAlive: stable, host: stable };
  }

  /** A batch of `tokens` fits the engine's buffers. */
  #checkCapacity(tokens: number): void {
    const { rank, maxTokens } = this.#engine;
    if (tokens > maxTokens) {
      throw new WeftError({
        field: "tokens",
        rank,
        problem: `${tokens} tokens exceed the engine's maxTokens ${maxTokens}`,
        fix: `create the Engine with { maxTokens: ${tokens} } or more, or split the batch`,
      });
    }
  }

  /** `tokens` is a valid size of a staging view. */
  #checkTokens(tokens: number): void {
    const { rank, maxTokens } = this.#engine;
    if (!Number.isInteger(tokens) || tokens < 0 || tokens > maxTokens) {
      throw new WeftError({
        field: "tokens",
        rank,
        problem: `is ${tokens}`,
        fix: `pass an integer in 0…${maxTokens} (the engine's maxTokens)`,
      });
    }
  }
}
