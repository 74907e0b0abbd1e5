/**
 * Combine's buffers on this GPU: the expert outputs `y` (device tensors of
 * this GPU as they are, anything else uploaded for the call) and the output
 * (allocated, or the caller's, checked), freed or kept as the call ends.
 *
 * @module
 */
import type { DType } from "../../dsl/types.ts";
import type { HostRows, Tensor } from "../core/engine_api.ts";
import { WeftError } from "../../dsl/errors.ts";
import { checkRows } from "../core/input_check.ts";
import { DeviceTensor } from "./device_tensor.ts";
import { type InputEngine, one, type RankInputs, shapeOf } from "./inputs.ts";

/**
 * The buffers of one combine. Disposing frees the temporaries, and the
 * output too unless {@link CombineBuffers.keep} handed it to the caller.
 */
export class CombineBuffers implements Disposable {
  /** y on this GPU. */
  readonly y: Deno.PointerValue;
  /** The output. */
  readonly out: DeviceTensor<DType>;
  // What y's pointer points into (the input, or its upload), kept alive for the call.
  readonly #keepAlive: unknown;
  readonly #temporaries: readonly DeviceTensor[];
  readonly #allocated: boolean;
  #kept = false;

  /** Buffers whose `allocated` output is freed on dispose unless kept. */
  constructor(
    y: Deno.PointerValue,
    keepAlive: unknown,
    temporaries: readonly DeviceTensor[],
    out: DeviceTensor<DType>,
    allocated: boolean,
  ) {
    this.y = y;
    this.#keepAlive = keepAlive;
    this.#temporaries = temporaries;
    this.out = out;
    this.#allocated = allocated;
  }

  /** The output, now the caller's. */
  keep(): DeviceTensor<DType> {
    this.#kept = true;
    return this.out;
  }

  /** Frees the temporaries (and an allocated output nobody kept). */
  [Symbol.dispose](): void {
    for (const t of this.#temporaries) t.close();
    if (this.#allocated && !this.#kept) this.out.close();
    void this.#keepAlive;
  }
}

/**
 * The fix a combine failure of one rank's arguments names on every rank (the
 * ranks fail the call together; across nodes the good ranks learn it at once).
 */
export const COMBINE_FIX =
  "pass every rank's ys as the handle's recv rows × hidden in the plan's dtype; fix the input of the rank named in the message (the call failed on every rank, nothing was written)";

/**
 * Checks and places combine's `ys` (for a handle of `recvRows` rows, `tokens`
 * tokens) and its output; throws host-side errors after freeing what it made.
 */
export async function combineBuffers(
  engine: InputEngine,
  inputs: RankInputs,
  handle: { readonly tokens: number; readonly recvRows: number },
  ys: readonly (HostRows | Tensor)[],
  outs: readonly DeviceTensor[] | undefined,
): Promise<CombineBuffers> {
  const { plan, rank, device } = engine;
  const y = one(rank, "ys", ys);
  checkRows(plan, rank, "ys", shapeOf(y), handle.recvRows);
  const { pointer, host } = await inputs.rowsPointer("ys", y);
  const temporaries: DeviceTensor[] = [];
  let yPointer = pointer;
  try {
    if (host !== undefined) {
      // weft_combine takes device y only.
      const t = DeviceTensor.upload(device, plan.dtype, handle.recvRows, plan.hidden, host);
      temporaries.push(t);
      yPointer = t.pointer;
    }
    const out = outs === undefined
      ? DeviceTensor.alloc(device, plan.dtype, handle.tokens, plan.hidden)
      : checkOut(engine, outs, handle.tokens);
    return new CombineBuffers(yPointer, y, temporaries, out, outs === undefined);
  } catch (error) {
    for (const t of temporaries) t.close();
    throw error;
  }
}

function checkOut(
  engine: InputEngine,
  outs: readonly DeviceTensor[],
  tokens: number,
): DeviceTensor<DType> {
  const { plan: { dtype, hidden }, rank, device } = engine;
  const out = one(rank, "out", outs);
  if (
    !(out instanceof DeviceTensor) || out.deviceIndex !== device || out.dtype !== dtype ||
    out.rows !== tokens || out.cols !== hidden
  ) {
    throw new WeftError({
      field: "out",
      rank,
      problem: `expected a ${dtype} DeviceTensor of ${tokens}×${hidden} on cuda:${device}`,
      fix:
        "pass DeviceTensor.alloc(device, plan.dtype, tokens, plan.hidden), or leave out to let combine allocate",
    });
  }
  // Checked above: its dtype is the plan's.
  return out as DeviceTensor<DType>;
}
