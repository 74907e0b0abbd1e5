/**
 * The call shape every weft engine shares, so a script switches between the
 * CPU Simulator and the GPU engine in one line.
 *
 * An engine drives some ranks: the Simulator drives all of them in one
 * process, the GPU engine drives the one rank of its process. `dispatch` and
 * `combine` take one input per driven rank (in `engine.ranks` order) and
 * return one result per driven rank. Both are collective: on GPUs every rank
 * of the world must call them.
 *
 * @module
 */
import type { DType, TensorDType } from "../../dsl/types.ts";
import type { RankRouting } from "../io/routing.ts";

/**
 * One rank's routing on the host, as the generators in lib/routing.ts make
 * it. Every call that takes a {@link RoutingInput} takes one of these.
 */
export type { RankRouting };

/**
 * Rows of hidden states on the host: f32 as Float32Array; bf16 and f16 as
 * their raw 16-bit patterns in a Uint16Array (see lib/dtype.ts to convert);
 * e4m3 (a quantized dispatch's output only) as raw bytes in a Uint8Array
 * (see lib/fp8.ts).
 */
export type HostRows = Float32Array | Uint16Array | Uint8Array;

/**
 * The host array that holds the data of a tensor of dtype `D`: the
 * {@link HostRows} type of a row dtype, Int32Array for `i32`. With `D` a
 * union (the default {@link TensorDType}) it is the union of those arrays,
 * so code that reads a tensor of unknown dtype must look at what it got.
 */
export type HostArrayOf<D extends TensorDType> = D extends "f32" ? Float32Array
  : D extends "i32" ? Int32Array
  : D extends "e4m3" ? Uint8Array
  : Uint16Array;

/** The host array of a tensor of any dtype: {@link HostRows} or, for `i32`, an Int32Array. */
export type HostArray = HostArrayOf<TensorDType>;

/**
 * A [rows × cols] matrix that lives on the host or on a GPU. `D` narrows
 * the dtype where it is known (a dispatch's `recv` is never `i32`), so that
 * `read()` is typed by it: `Tensor<"i32">` reads an Int32Array, a tensor of
 * rows reads {@link HostRows}.
 */
export interface Tensor<D extends TensorDType = TensorDType> {
  /** Element type. */
  readonly dtype: D;
  /** Number of rows. */
  readonly rows: number;
  /** Elements per row (the hidden size H for dispatch and combine tensors, K for routing). */
  readonly cols: number;
  /** Where the data lives: "host", or "cuda:N". */
  readonly device: string;
  /** A host copy of the data (for a host tensor, the data itself). */
  read(): Promise<HostArrayOf<D>>;
}

/**
 * Rows already in the wire format of a pattern that quantizes dispatch
 * (`.quantize("e4m3")`), e.g. from a kernel that quantizes as it writes its
 * output: they are sent as given, bit for bit, and skip weft's quantize
 * pass. Any finite positive scales may be used (not only weft's powers of
 * two); row t's block b is q[t, b·128 …] · scales[t, b].
 */
export interface QuantizedInput {
  /** [T × H] E4M3 bytes: a Uint8Array or an e4m3 tensor. */
  readonly q: Uint8Array | Tensor;
  /** [T × H/128] f32 block scales: a Float32Array or an f32 tensor. */
  readonly scales: Float32Array | Tensor;
}

/**
 * One rank's routing, as dispatch and `layout` take it: host arrays (a
 * {@link RankRouting} is one), or tensors — a real router computes its
 * top-k on the GPU, and reading it back to the host every step would cost a
 * synchronizing copy. The GPU engine reads a tensor on its own GPU where it
 * is (no host round trip); any other tensor is read to the host first.
 * Values (expert range, duplicates, NaN weights) are checked wherever the
 * engine reads them: on the device for the GPU engine.
 */
export interface RoutingInput {
  /** [T × K] global expert ids, -1 for an empty slot: an Int32Array or an `i32` [T × K] tensor. */
  readonly topkIdx: Int32Array | Tensor<"i32">;
  /** [T × K] routing weights: a Float32Array or an `f32` [T × K] tensor. */
  readonly topkWeights: Float32Array | Tensor<"f32">;
}

/** One rank's input to dispatch: its rows and its routing ({@link RoutingInput}). */
export interface RankInput extends RoutingInput {
  /**
   * [T × H] rows; host rows or a device tensor on this rank's GPU; or, for a
   * pattern that quantizes dispatch, rows already quantized.
   */
  readonly x: HostRows | Tensor | QuantizedInput;
}

/** What dispatch returns for one rank (DESIGN.md "Dispatch output on rank d"). */
export interface DispatchResult {
  /** The rank this result is for. */
  readonly rank: number;
  /**
   * [R × H] received rows, in the plan's receive order: in the plan's dtype,
   * or e4m3 bytes when the pattern quantizes dispatch.
   */
  readonly recv: Tensor<DType | "e4m3">;
  /**
   * [R × H/128] f32 scales of `recv` (row i's block b is recv · scale[i, b]),
   * when the pattern quantizes dispatch; absent otherwise.
   */
  readonly recvScales?: Tensor<"f32">;
  /** [L] rows per local expert. */
  readonly expertCounts: Int32Array;
  /** [R] the weight of each received (token, expert) pair. */
  readonly recvWeights: Float32Array;
  /** [R] source rank of each received row. */
  readonly srcRank: Int32Array;
  /** [R] source token of each received row. */
  readonly srcToken: Int32Array;
  /** [R] k slot of each received row. */
  readonly srcK: Int32Array;
}

/**
 * Keeps one batch's layout alive for combine and cached re-dispatch.
 * Release with `close()` or `using`.
 */
export interface DispatchHandle extends Disposable {
  /** The ranks of the engine that made it. */
  readonly ranks: readonly number[];
  /** Releases the layout; later use throws. */
  close(): void;
}

/** The result of one collective dispatch over the engine's ranks. */
export interface Dispatched {
  /** One per driven rank, in `engine.ranks` order. */
  readonly results: readonly DispatchResult[];
  /** The batch's layout, for combine and re-dispatch. */
  readonly handle: DispatchHandle;
}

/** An engine: executes a plan's dispatch and combine on data. */
export interface ShuffleEngine extends Disposable {
  /** "simulator" or "gpu". */
  readonly kind: "simulator" | "gpu";
  /** The ranks this engine drives (all for the Simulator, one for a GPU process). */
  readonly ranks: readonly number[];
  /** Dispatch one batch: one input per driven rank. */
  dispatch(inputs: readonly RankInput[]): Promise<Dispatched>;
  /**
   * The layout step of dispatch alone: one routing per driven rank (no rows),
   * host arrays or tensors as in dispatch. Returns a handle whose rows are
   * moved by `redispatch`; layout then redispatch gives exactly what
   * dispatch gives. Lets a caller plan a batch as soon as the router has
   * run, before the activations exist.
   */
  layout(routing: readonly RoutingInput[]): Promise<DispatchHandle>;
  /** Re-dispatch new rows through a handle's cached layout (same routing). */
  redispatch(
    handle: DispatchHandle,
    xs: readonly (HostRows | Tensor | QuantizedInput)[],
  ): Promise<Dispatched>;
  /**
   * Combine expert outputs: one [R × H] y per driven rank, in the handle's
   * receive layout. Returns one [T × H] output per driven rank.
   */
  combine(handle: DispatchHandle, ys: readonly (HostRows | Tensor)[]): Promise<Tensor<DType>[]>;
  /**
   * Waits for the work the last call left running and throws its failure.
   * The GPU engine's calls return while rows still move; the Simulator's
   * calls are complete when they return, so there it resolves at once.
   */
  synchronize(): Promise<void>;
  /** Releases the engine; later calls on it throw. */
  close(): void;
}
