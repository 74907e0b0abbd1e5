/**
 * The Simulator's dispatch handle: one batch's layout, routing weights and,
 * for the staged protocol, the protocol state the ranks keep between
 * layout, dispatch and combine.
 *
 * @module
 */
import type { BatchLayout } from "../../dsl/types.ts";
import type { DispatchHandle } from "../core/engine_api.ts";
import { WeftError } from "../../dsl/errors.ts";
import type { StagedBatch } from "./protocol.ts";

/** What a handle holds while open. */
export interface SimBatch {
  /** The batch's layout. */
  readonly layout: BatchLayout;
  /** Each rank's routing weights (copies). */
  readonly weights: readonly Float32Array[];
  /** The staged protocol's state, for a Simulator with `protocol: "staged"`. */
  readonly staged?: StagedBatch;
}

/**
 * One batch's cached layout and routing weights, for combine and
 * re-dispatch. Using it after `close()` throws a WeftError.
 */
export class SimulatorHandle implements DispatchHandle {
  /** Every rank of the Simulator's plan. */
  readonly ranks: readonly number[];
  #batch: SimBatch | undefined;
  readonly #owner: object;

  /** @internal Built by the Simulator's dispatch or layout. */
  constructor(owner: { readonly ranks: readonly number[] }, batch: SimBatch) {
    this.#owner = owner;
    this.ranks = owner.ranks;
    this.#batch = batch;
  }

  /** The batch's layout descriptor. */
  get layout(): BatchLayout {
    return this.#open().layout;
  }

  /** @internal The batch; throws once closed or when `owner` did not make it. */
  open(owner: object): SimBatch {
    if (owner !== this.#owner) {
      throw new WeftError({
        field: "handle",
        problem: "belongs to another engine",
        fix: "pass the handle returned by this Simulator's dispatch",
      });
    }
    return this.#open();
  }

  #open(): SimBatch {
    if (this.#batch === undefined) {
      throw new WeftError({
        field: "handle",
        problem: "is closed",
        fix: "combine or re-dispatch before closing the handle, or dispatch again",
      });
    }
    return this.#batch;
  }

  /** Release the layout; later use throws. Idempotent. */
  close(): void {
    this.#batch = undefined;
  }

  /** Same as {@link SimulatorHandle.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
