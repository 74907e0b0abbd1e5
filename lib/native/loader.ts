/**
 * Finds, opens and checks `libweft.so`, and turns native status codes into
 * WeftErrors. Everything GPU-side in lib/ goes through {@link native}.
 *
 * Where the library is looked for: `WEFT_LIB` if set, else
 * `native/build/libweft.so` next to this module's package (found from
 * import.meta.url, so it works from any working directory).
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import {
  openLibrary,
  Status,
  WEFT_ABI_VERSION,
  type WeftLibrary,
  type WeftSymbols,
} from "./ffi.ts";

/** Environment variable that overrides where libweft.so is loaded from. */
export const WEFT_LIB_ENV = "WEFT_LIB";

let opened: WeftLibrary | undefined;

/**
 * The path the loader will try: `WEFT_LIB`, else the local build.
 *
 * @example
 * ```ts
 * import { libraryPath } from "./native.ts";
 * console.assert(libraryPath({}).endsWith("native/build/libweft.so"));
 * ```
 */
export function libraryPath(
  env: Readonly<Record<string, string | undefined>> = envSnapshot(),
): string {
  const override = env[WEFT_LIB_ENV];
  if (override !== undefined && override !== "") return override;
  const url = new URL("../native/build/libweft.so", import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : url.href;
}

function envSnapshot(): Record<string, string | undefined> {
  return { [WEFT_LIB_ENV]: Deno.env.get(WEFT_LIB_ENV) };
}

/**
 * The loaded library's symbols (loaded once per process). Throws a WeftError
 * when the file is missing (build it), cannot be opened (the message says
 * why: a missing CUDA driver, a wrong architecture) or has another ABI
 * version than this binding.
 *
 * @example
 * ```ts ignore
 * import { native, unwrap } from "./native.ts";
 * const out = new Int32Array(1);
 * unwrap(native().weft_device_count(out), "weft_device_count");
 * ```
 */
export function native(): WeftSymbols {
  return (opened ??= load(libraryPath())).symbols;
}

/** Opens the library at `path` and checks its ABI version (exported for tests). */
export function load(path: string): WeftLibrary {
  const from = Deno.env.get(WEFT_LIB_ENV) ? `${WEFT_LIB_ENV}=${path}` : path;
  let exists = false;
  try {
    exists = Deno.statSync(path).isFile;
  } catch { /* reported below */ }
  if (!exists) {
    throw new WeftError({
      field: "native library",
      problem: `libweft.so not found at ${from}`,
      fix:
        "run `deno task build` (needs nvcc), or set WEFT_LIB to a built libweft.so; without a GPU use the Simulator",
    });
  }
  let lib: WeftLibrary;
  try {
    lib = openLibrary(path);
  } catch (cause) {
    const text = String(cause instanceof Error ? cause.message : cause);
    const driver = /libcuda|cudart|libnvidia/i.test(text);
    throw new WeftError({
      field: "native library",
      problem: `cannot load ${from}: ${text}`,
      fix: driver
        ? "this machine has no usable NVIDIA driver: run on a GPU machine, or use the Simulator"
        : /undefined symbol|could not find symbol/i.test(text)
        ? "the library is older or newer than lib/ffi.ts: rebuild it with `deno task build`"
        : "rebuild it with `deno task build` on this machine",
      cause,
    });
  }
  const version = lib.symbols.weft_abi_version();
  if (version !== WEFT_ABI_VERSION) {
    lib.close();
    throw new WeftError({
      field: "native library",
      problem: `${from} has ABI version ${version}, lib/ffi.ts expects ${WEFT_ABI_VERSION}`,
      fix:
        "rebuild the library with `deno task build` from this checkout (or point WEFT_LIB at a matching build)",
    });
  }
  return lib;
}

/**
 * The message of the calling thread's last native failure. Nonblocking calls
 * fail on a pool thread, so this relies on the native side also keeping the
 * last message process-wide.
 */
export function lastError(): string {
  const lib = native();
  const buf = new Uint8Array(1024);
  const full = lib.weft_last_error(buf, buf.length);
  if (full >= buf.length) {
    const big = new Uint8Array(full + 1);
    lib.weft_last_error(big, big.length);
    return cString(big);
  }
  return cString(buf);
}

function cString(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return new TextDecoder().decode(end >= 0 ? buf.subarray(0, end) : buf);
}

/** Context that sharpens the WeftError of a failed call. */
export interface CallContext {
  /** This process's rank. */
  readonly rank?: number;
  /** The user-facing field the call was about (e.g. "topkIdx", "maxTokens"). */
  readonly field?: string;
}

/** What a failed native call carries as the WeftError's `cause`. */
export interface NativeFailure {
  /** The C function that failed. */
  readonly call: string;
  /** Its status code (weft.h WEFT_ERR_*). */
  readonly status: number;
  /** `weft_last_error()` after the failure. */
  readonly message: string;
}

/**
 * Throws a WeftError for a nonzero status, carrying the native message. The
 * field and fix depend on the status: bad input points at `topkIdx`, a
 * timeout at a `peer`, capacity at `maxTokens`, and so on.
 *
 * @example
 * ```ts ignore
 * import { native, unwrap } from "./native.ts";
 * unwrap(await native().weft_comm_barrier(comm), "weft_comm_barrier", { rank: 0 });
 * ```
 */
export function unwrap(status: number, call: string, context: CallContext = {}): void {
  if (status === Status.OK) return;
  throw nativeError(status, call, lastErrorSafe(), context);
}

function lastErrorSafe(): string {
  try {
    return lastError();
  } catch {
    return "";
  }
}

/** The WeftError for `status` (exported for tests: maps without a library). */
export function nativeError(
  status: number,
  call: string,
  message: string,
  context: CallContext = {},
): WeftError {
  const said = message !== "" ? message : "no message (weft_last_error was empty on this thread)";
  const cause: NativeFailure = { call, status, message: said };
  // Native messages name the rank at fault where they know it: "… on rank 3 …"
  // on that rank, "rank(s) 3 failed during …" on its peers (the first listed).
  const named = /\brank(?:\(s\))? (\d+)\b/.exec(said);
  const rank = context.rank;
  const info = (field: string, fix: string, faultRank: number | undefined = rank): WeftError =>
    new WeftError({
      field,
      problem: `${call} failed: ${said}`,
      fix,
      ...(faultRank !== undefined ? { rank: faultRank } : {}),
      cause,
    });
  switch (status) {
    case Status.BAD_INPUT:
      return info(
        context.field ?? "topkIdx",
        "every expert id must be -1 or in [0, experts) with no expert twice in one token; fix the input of the rank named in the message (the batch was rejected on every rank, nothing was written)",
        named !== null ? Number(named[1]) : rank,
      );
    case Status.TIMEOUT:
      return info(
        "peer",
        "a peer rank died or is stuck: check the other ranks' output (the launcher prefixes it with [rank r]); raise timeoutMs if they are only slow",
      );
    case Status.CAPACITY:
      return info(
        context.field ?? "maxTokens",
        "create the Engine with a larger maxTokens, or the Communicator with a larger heapBytes",
      );
    case Status.NO_DEVICE:
      return info("device", "run on a machine with an NVIDIA GPU and driver, or use the Simulator");
    case Status.NCCL:
      return info(
        "nccl",
        "install NCCL (libnccl.so.2) or point the native loader at it; NCCL_DEBUG=WARN shows more",
      );
    case Status.INVALID:
      return info(
        context.field ?? call,
        "this is a bug in weft's binding or a misuse of a closed object: report it with the message",
      );
    case Status.CUDA:
      return info(
        "cuda",
        "check the GPU with nvidia-smi; rerun under compute-sanitizer to locate the fault",
      );
    default:
      return info(call, `unknown status ${status}: rebuild libweft.so from this checkout`);
  }
}

/**
 * The number of CUDA devices, or a WeftError saying why there are none
 * (no library, no driver, no GPU).
 *
 * @example
 * ```ts ignore
 * import { deviceCount } from "./native.ts";
 * console.log(`${deviceCount()} GPUs`);
 * ```
 */
export function deviceCount(): number {
  const out = new Int32Array(1);
  unwrap(native().weft_device_count(out), "weft_device_count", { field: "device" });
  if (out[0] === 0) {
    throw new WeftError({
      field: "device",
      problem: "the CUDA driver reports no GPU",
      fix:
        "run on a machine with an NVIDIA GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use the Simulator",
    });
  }
  return out[0];
}

/**
 * Throws a WeftError unless the native side could load NCCL.
 *
 * @example
 * ```ts ignore
 * import { requireNccl } from "./native.ts";
 * requireNccl();
 * ```
 */
export function requireNccl(): void {
  const out = new Int32Array(1);
  unwrap(native().weft_nccl_available(out), "weft_nccl_available", { field: "nccl" });
  if (out[0] !== 1) {
    throw new WeftError({
      field: "nccl",
      problem: "libnccl.so.2 could not be loaded",
      fix:
        "install NCCL (e.g. the nvidia-nccl-cu12 wheel or libnccl2), or create the Communicator with nccl: false",
    });
  }
}
