/**
 * The environment contract between `lib/dist/launch.ts` and the processes it
 * starts: which rank a process is, how many there are, which GPU it drives and
 * where the rendezvous store listens. The launcher writes these variables; a
 * worker reads them with {@link readLaunchEnv}.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";

/** Names of the variables the launcher sets for every process it starts. */
export const ENV: Readonly<{
  rank: "RANK";
  world: "WORLD_SIZE";
  localRank: "LOCAL_RANK";
  localWorld: "LOCAL_WORLD_SIZE";
  nodeRank: "NODE_RANK";
  store: "WEFT_STORE";
  device: "WEFT_DEVICE";
  timeoutMs: "WEFT_TIMEOUT_MS";
  secret: "WEFT_STORE_SECRET";
}> = Object.freeze({
  rank: "RANK",
  world: "WORLD_SIZE",
  localRank: "LOCAL_RANK",
  localWorld: "LOCAL_WORLD_SIZE",
  nodeRank: "NODE_RANK",
  store: "WEFT_STORE",
  /** The CUDA device index: ⌊i/k⌋ for process i of the host with `--ranks-per-gpu k` (LOCAL_RANK counts inside a possibly emulated node, so it cannot name the device). */
  device: "WEFT_DEVICE",
  timeoutMs: "WEFT_TIMEOUT_MS",
  /** The job's store secret, which every store connection presents first. */
  secret: "WEFT_STORE_SECRET",
});

/** Where this process sits in the launched world. */
export interface LaunchEnv {
  /** Global rank, 0 ≤ rank < world. */
  readonly rank: number;
  /** Number of processes in the world. */
  readonly world: number;
  /** Rank inside this (possibly emulated) node. */
  readonly localRank: number;
  /** Processes per node (the plan's `gpusPerNode`). */
  readonly localWorld: number;
  /** Index of this node. */
  readonly nodeRank: number;
  /** Number of nodes (`world / localWorld`). */
  readonly nodes: number;
  /**
   * The CUDA device this process drives: `WEFT_DEVICE` when set (the
   * launcher always sets it; with emulated nodes or several ranks per GPU
   * LOCAL_RANK cannot name the device), else LOCAL_RANK.
   */
  readonly device: number;
  /** Rendezvous store address `host:port`. */
  readonly store: string;
  /** Timeout for waits on peers, from `WEFT_TIMEOUT_MS`, if set. */
  readonly timeoutMs?: number;
  /** The store secret, from `WEFT_STORE_SECRET`, if set (the launcher always sets it). */
  readonly secret?: string;
}

/**
 * Reads the launcher's variables from `env` (default: the process
 * environment). Throws a {@link WeftError} naming the variable when one is
 * missing or inconsistent, with the fix (start the script through the
 * launcher).
 *
 * @example
 * ```ts
 * import { readLaunchEnv } from "./env.ts";
 * const env = readLaunchEnv({ RANK: "1", WORLD_SIZE: "2", LOCAL_RANK: "1", WEFT_STORE: "127.0.0.1:29500" });
 * console.assert(env.rank === 1 && env.device === 1 && env.nodes === 1 && env.secret === undefined);
 * const k = readLaunchEnv({ RANK: "3", WORLD_SIZE: "4", LOCAL_RANK: "1", LOCAL_WORLD_SIZE: "2",
 *   NODE_RANK: "1", WEFT_DEVICE: "0", WEFT_STORE: "127.0.0.1:29500", WEFT_STORE_SECRET: "s" });
 * console.assert(k.device === 0 && k.nodes === 2 && k.secret === "s");
 * ```
 */
export function readLaunchEnv(
  env: Readonly<Record<string, string | undefined>> = Deno.env.toObject(),
): LaunchEnv {
  const rank = intVar(env, ENV.rank, undefined);
  const world = intVar(env, ENV.world, undefined);
  const localRank = intVar(env, ENV.localRank, rank);
  const localWorld = intVar(env, ENV.localWorld, world);
  const nodeRank = intVar(env, ENV.nodeRank, 0);
  const device = intVar(env, ENV.device, localRank);
  const store = env[ENV.store];
  if (store === undefined || parseAddress(store) === undefined) {
    throw launcherError(
      ENV.store,
      store === undefined ? "is not set" : `is "${store}", not host:port`,
    );
  }
  if (world < 1 || rank >= world) {
    throw launcherError(ENV.rank, `is ${rank} with ${ENV.world}=${world}; need 0 ≤ rank < world`);
  }
  if (localWorld < 1 || world % localWorld !== 0 || localRank >= localWorld) {
    throw launcherError(
      ENV.localWorld,
      `is ${localWorld} with ${ENV.world}=${world}, ${ENV.localRank}=${localRank}; need world divisible by it and local rank below it`,
    );
  }
  const timeout = env[ENV.timeoutMs];
  const secret = env[ENV.secret];
  return {
    rank,
    world,
    localRank,
    localWorld,
    nodeRank,
    nodes: world / localWorld,
    device,
    store,
    ...(timeout !== undefined ? { timeoutMs: intVar(env, ENV.timeoutMs, undefined) } : {}),
    ...(secret !== undefined ? { secret } : {}),
  };
}

/**
 * The job's store secret from `WEFT_STORE_SECRET`, or "" when it is unset or
 * the environment is not readable (no `--allow-env`). Store clients and
 * servers default to it.
 *
 * @example
 * ```ts
 * import { storeSecretFromEnv } from "./env.ts";
 * console.assert(typeof storeSecretFromEnv() === "string");
 * ```
 */
export function storeSecretFromEnv(): string {
  try {
    return Deno.env.get(ENV.secret) ?? "";
  } catch {
    return "";
  }
}

/**
 * Splits `host:port` (IPv6 as `[::1]:port`); undefined when malformed.
 *
 * @example
 * ```ts
 * import { parseAddress } from "./env.ts";
 * console.assert(parseAddress("127.0.0.1:29500")?.port === 29500);
 * console.assert(parseAddress("[::1]:80")?.hostname === "::1");
 * ```
 */
export function parseAddress(
  address: string,
): { readonly hostname: string; readonly port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})$/.exec(address.trim());
  if (m === null) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { hostname: m[1] ?? m[2], port };
}

function intVar(
  env: Readonly<Record<string, string | undefined>>,
  name: string,
  fallback: number | undefined,
): number {
  const text = env[name];
  if (text === undefined || text === "") {
    if (fallback !== undefined) return fallback;
    throw launcherError(name, "is not set");
  }
  if (!/^\d+$/.test(text)) throw launcherError(name, `is "${text}", not a non-negative integer`);
  return Number(text);
}

function launcherError(field: string, problem: string): WeftError {
  return new WeftError({
    field,
    problem,
    fix:
      "start the script with `deno task launch --gpus N script.ts`, which sets RANK, WORLD_SIZE, LOCAL_RANK and WEFT_STORE",
  });
}
