/**
 * Finds, opens and checks `libweft.so`: the one `Deno.dlopen` of weft.
 * Everything GPU-side in lib/ reaches the library through {@link native}.
 *
 * Where the library is looked for: `WEFT_LIB` if set, else
 * `native/build/libweft.so` of this checkout (found from import.meta.url, so
 * it works from any working directory).
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { ABI_VERSION, symbols, type WeftLibrary, type WeftSymbols } from "./ffi.ts";

/** Environment variable that overrides where libweft.so is loaded from. */
export const WEFT_LIB_ENV = "WEFT_LIB";

let opened: WeftLibrary | undefined;

/**
 * The path the loader will try: `WEFT_LIB`, else the local build.
 *
 * @example
 * ```ts
 * import { libraryPath } from "./loader.ts";
 * console.assert(libraryPath({}).endsWith("native/build/libweft.so"));
 * ```
 */
export function libraryPath(
  env: Readonly<Record<string, string | undefined>> = {
    [WEFT_LIB_ENV]: Deno.env.get(WEFT_LIB_ENV),
  },
): string {
  const override = env[WEFT_LIB_ENV];
  if (override !== undefined && override !== "") return override;
  const url = new URL("../../native/build/libweft.so", import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : url.href;
}

/**
 * The loaded library's symbols (loaded once per process). Throws a WeftError
 * when the file is missing (build it), cannot be opened (the message says
 * why: a missing CUDA driver, a wrong architecture) or has another ABI
 * version than this binding.
 *
 * @example
 * ```ts ignore
 * import { native } from "./loader.ts";
 * console.log(native().weft_abi_version());
 * ```
 */
export function native(): WeftSymbols {
  return (opened ??= load(libraryPath())).symbols;
}

const REBUILD = "rebuild native/build/libweft.so with `deno task build`";

/**
 * Opens the library at `path` and checks its ABI version (exported for
 * tests; everything else calls {@link native}).
 *
 * @example
 * ```ts
 * import { load } from "./loader.ts";
 * import { WeftError } from "../../dsl/errors.ts";
 * try {
 *   load("/nonexistent/libweft.so");
 * } catch (e) {
 *   console.assert(e instanceof WeftError && e.field === "native library");
 * }
 * ```
 */
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
    lib = Deno.dlopen(path, symbols);
  } catch (cause) {
    const text = String(cause instanceof Error ? cause.message : cause);
    throw new WeftError({
      field: "native library",
      problem: `cannot load ${from}: ${text}`,
      fix: /libcuda|cudart|libnvidia/i.test(text)
        ? "this machine has no usable NVIDIA driver: run on a GPU machine, or use the Simulator"
        : /undefined symbol|could not find symbol|failed to register symbol/i.test(text)
        ? `the library is older or newer than lib/native/ffi.ts: ${REBUILD}`
        : `${REBUILD} on this machine`,
      cause,
    });
  }
  const version = lib.symbols.weft_abi_version();
  if (version !== ABI_VERSION) {
    lib.close();
    throw new WeftError({
      field: "native library",
      problem: `${from} has ABI version ${version}, lib/native/ffi.ts expects ${ABI_VERSION}`,
      fix: `${REBUILD} from this checkout (or point WEFT_LIB at a matching build)`,
    });
  }
  return lib;
}
