/**
 * Native status codes and how they become WeftErrors: the field and fix
 * follow from the status, the message from `weft_last_error()` and the rank
 * at fault from `weft_last_error_rank()`.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { native } from "./loader.ts";

/** Status codes of weft.h (`WEFT_OK`, `WEFT_ERR_*`). */
export const Status: Readonly<{
  OK: 0;
  CUDA: 1;
  NCCL: 2;
  INVALID: 3;
  BAD_INPUT: 4;
  TIMEOUT: 5;
  CAPACITY: 6;
  NO_DEVICE: 7;
}> = Object.freeze(
  {
    OK: 0,
    CUDA: 1,
    NCCL: 2,
    INVALID: 3,
    BAD_INPUT: 4,
    TIMEOUT: 5,
    CAPACITY: 6,
    NO_DEVICE: 7,
  } as const,
);

/** Context that sharpens the WeftError of a failed call. */
export interface CallContext {
  /** This process's rank. */
  readonly rank?: number;
  /** The user-facing field the call was about (e.g. "topkIdx", "maxTokens"). */
  readonly field?: string;
  /** The fix for a bad input of this call, when the status's default does not fit. */
  readonly fix?: string;
}

/** What native reports about its most recent failure. */
export interface LastError {
  /** `weft_last_error()`; empty when native said nothing. */
  readonly message: string;
  /** `weft_last_error_rank()`: the rank at fault, -1 when none is known. */
  readonly rank: number;
}

/** What a failed native call carries as the WeftError's `cause`. */
export interface NativeFailure extends LastError {
  /** The C function that failed. */
  readonly call: string;
  /** Its status code (weft.h WEFT_ERR_*). */
  readonly status: number;
}

/**
 * The process's last native failure. Nonblocking calls fail on a pool
 * thread, so this relies on the native side keeping it process-wide.
 *
 * @example
 * ```ts ignore
 * import { lastError } from "./status.ts";
 * const { message, rank } = lastError();
 * ```
 */
export function lastError(): LastError {
  const lib = native();
  const buf = new Uint8Array(1024);
  const full = lib.weft_last_error(buf, buf.length);
  let message = cString(buf);
  if (full >= buf.length) {
    const big = new Uint8Array(full + 1);
    lib.weft_last_error(big, big.length);
    message = cString(big);
  }
  return { message, rank: lib.weft_last_error_rank() };
}

function cString(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return new TextDecoder().decode(end >= 0 ? buf.subarray(0, end) : buf);
}

/**
 * Throws a WeftError for a nonzero status, carrying the native message and
 * the rank at fault.
 *
 * @example
 * ```ts ignore
 * import { native } from "./loader.ts";
 * import { unwrap } from "./status.ts";
 * unwrap(await native().weft_comm_barrier(comm), "weft_comm_barrier", { rank: 0 });
 * ```
 */
export function unwrap(status: number, call: string, context: CallContext = {}): void {
  if (status === Status.OK) return;
  throw nativeError(status, call, lastErrorSafe(), context);
}

function lastErrorSafe(): LastError {
  try {
    return lastError();
  } catch {
    return { message: "", rank: -1 };
  }
}

/**
 * Field and fix per status. `field` is the default when the call's context
 * names none ("" means the call itself); `own` statuses always name theirs.
 */
const MAPPINGS: Readonly<Record<number, { field: string; own?: true; fix: string }>> = {
  [Status.BAD_INPUT]: {
    field: "topkIdx",
    fix:
      "every expert id must be -1 or in [0, experts) with no expert twice in one token; fix the input of the rank named in the message (the batch was rejected on every rank, nothing was written)",
  },
  [Status.TIMEOUT]: {
    field: "peer",
    own: true,
    fix:
      "a peer rank died or is stuck: check the other ranks' output (the launcher prefixes it with [rank r]); raise timeoutMs if they are only slow",
  },
  [Status.CAPACITY]: {
    field: "maxTokens",
    fix: "create the Engine with a larger maxTokens, or the Communicator with a larger heapBytes",
  },
  [Status.NO_DEVICE]: {
    field: "device",
    own: true,
    fix: "run on a machine with an NVIDIA GPU and driver, or use the Simulator",
  },
  [Status.NCCL]: {
    field: "nccl",
    own: true,
    fix: "install NCCL (libnccl.so.2) or point the native loader at it; NCCL_DEBUG=WARN shows more",
  },
  [Status.INVALID]: {
    field: "",
    fix:
      "this is a bug in weft's binding or a misuse of a closed object: report it with the message",
  },
  [Status.CUDA]: {
    field: "cuda",
    own: true,
    fix: "check the GPU with nvidia-smi; rerun under compute-sanitizer to locate the fault",
  },
};

/**
 * The WeftError for `status` (exported for tests: maps without a library).
 * Its rank is the one native names as failing (a peer's rank on the ranks
 * that waited for it), else this process's rank from `context`.
 *
 * @example
 * ```ts
 * import { nativeError, Status } from "./status.ts";
 * const e = nativeError(Status.BAD_INPUT, "weft_dispatch", { message: "bad id", rank: 3 }, { rank: 0 });
 * console.assert(e.field === "topkIdx" && e.rank === 3);
 * ```
 */
export function nativeError(
  status: number,
  call: string,
  last: LastError,
  context: CallContext = {},
): WeftError {
  const message = last.message !== ""
    ? last.message
    : "no message (weft_last_error was empty on this thread)";
  const cause: NativeFailure = { call, status, message, rank: last.rank };
  const rank = last.rank >= 0 ? last.rank : context.rank;
  const mapping = MAPPINGS[status];
  const field = mapping === undefined
    ? call
    : mapping.own
    ? mapping.field
    : context.field ?? (mapping.field || call);
  return new WeftError({
    field,
    problem: `${call} failed: ${message}`,
    fix: (mapping?.own ? undefined : context.fix) ?? mapping?.fix ??
      `unknown status ${status}: rebuild libweft.so from this checkout`,
    ...(rank !== undefined ? { rank } : {}),
    cause,
  });
}
