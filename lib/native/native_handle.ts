/**
 * The one pattern every owner of a native object follows: hold the pointer
 * privately, release it exactly once on `close()`, refuse use after that
 * with a WeftError naming the owner, and let a FinalizationRegistry release
 * it when the owner is collected without being closed.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";

/** What a use after close reports. */
export interface ClosedError {
  /** The owner, as the user knows it ("engine", "tensor"). */
  readonly field: string;
  /** This process's rank, where ranks are involved. */
  readonly rank?: number;
  /** What went wrong; default "is closed". */
  readonly problem?: string;
  /** What to do instead. */
  readonly fix: string;
}

/** Frees a native object; must not reference the owner (or the backstop never fires). */
export type Release = (pointer: Deno.PointerValue) => void;

interface Held {
  readonly pointer: Deno.PointerValue;
  readonly release: Release | undefined;
}

// Release of objects nobody closed. A failure here has no one to report to;
// at process exit the library may be gone, and the driver frees the memory.
const backstop = new FinalizationRegistry<Held>((held) => {
  try {
    held.release?.(held.pointer);
  } catch { /* see above */ }
});

/**
 * A native pointer owned by `owner`, released once: by {@link close}, or
 * by the garbage collector once `owner` is unreachable. Without a `release`
 * it only tracks whether its owner was closed (a view of memory that
 * something else frees).
 *
 * @example
 * ```ts
 * import { NativeHandle } from "./native_handle.ts";
 * const owner = {};
 * let freed = 0;
 * const h = new NativeHandle(owner, Deno.UnsafePointer.create(64n), () => freed++, {
 *   field: "thing",
 *   fix: "make a new thing",
 * });
 * h.close();
 * h.close();
 * console.assert(freed === 1 && h.closed);
 * ```
 */
export class NativeHandle {
  #held: Held | undefined;
  readonly #closedError: ClosedError;

  /** Takes ownership of `pointer` for `owner`; `release` (if any) frees it. */
  constructor(
    owner: object,
    pointer: Deno.PointerValue,
    release: Release | undefined,
    closed: ClosedError,
  ) {
    this.#held = { pointer, release };
    this.#closedError = closed;
    if (release !== undefined) backstop.register(owner, this.#held, this);
  }

  /** True once released. */
  get closed(): boolean {
    return this.#held === undefined;
  }

  /** The pointer; a WeftError once released. */
  get pointer(): Deno.PointerValue {
    if (this.#held === undefined) {
      const { problem = "is closed", ...rest } = this.#closedError;
      throw new WeftError({ ...rest, problem });
    }
    return this.#held.pointer;
  }

  /** Releases the pointer (only the first call does anything). */
  close(): void {
    const held = this.#held;
    if (held === undefined) return;
    this.#held = undefined;
    if (held.release === undefined) return;
    backstop.unregister(this);
    held.release(held.pointer);
  }
}
