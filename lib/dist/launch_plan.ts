/**
 * What the launcher starts, computed without starting anything: the options
 * and their validation, each process's rank and environment
 * ({@link placeRanks}), the store's bind address and the job's secret.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { ENV, parseAddress } from "./env.ts";

/** What {@link launch} starts and how. */
export interface LaunchOptions {
  /** The script every rank runs. */
  readonly script: string;
  /** Arguments after the script. */
  readonly args?: readonly string[];
  /** GPUs on this host. */
  readonly gpus: number;
  /** Processes per GPU (default 1): `gpus × ranksPerGpu` processes, process i drives GPU ⌊i/ranksPerGpu⌋. */
  readonly ranksPerGpu?: number;
  /** Nodes in the world (default 1). */
  readonly nnodes?: number;
  /** This node's index (default 0). */
  readonly nodeRank?: number;
  /** Store address `host:port`; node 0 hosts it. Required with nnodes > 1. */
  readonly master?: string;
  /** Interface node 0's store binds (default: `master`'s host, else 127.0.0.1). */
  readonly bind?: string;
  /**
   * The store secret shared by every node of the job (default:
   * `WEFT_STORE_SECRET` of the launcher's environment, else generated on a
   * single host). Required with nnodes > 1.
   */
  readonly secret?: string;
  /** Split this host's processes into M emulated nodes of consecutive ranks. */
  readonly emulateNodes?: number;
  /** Names this job in NCCL_HOSTID values (default: random). */
  readonly jobId?: string;
  /** Milliseconds between SIGTERM and SIGKILL when stopping ranks (default 5000). */
  readonly graceMs?: number;
  /** Stop every rank after this many milliseconds; also bounds store waits. */
  readonly timeoutMs?: number;
  /** Extra variables for every rank, on top of the inherited environment. */
  readonly env?: Readonly<Record<string, string>>;
  /** Permission flags for `deno run` (default `["--allow-all"]`). */
  readonly denoFlags?: readonly string[];
  /** Receives every output line (prefixed, newline-terminated) and the launcher's own messages. */
  readonly output?: (stream: "stdout" | "stderr", text: string) => void;
  /** Aborting stops every rank (the CLI wires Ctrl-C here; reason "SIGTERM" exits 143). */
  readonly signal?: AbortSignal;
}

/** How one rank ended. */
export interface RankExit {
  /** Global rank. */
  readonly rank: number;
  /** Exit code (128 + n when killed by signal n). */
  readonly code: number;
  /** The signal that killed it, if one did. */
  readonly signal: Deno.Signal | null;
}

/** How the launch ended. */
export interface LaunchResult {
  /** 0 when every rank succeeded; otherwise the launcher's exit code. */
  readonly code: number;
  /** The rank that failed first, if any. */
  readonly failedRank?: number;
  /** One line naming what went wrong, if anything did. */
  readonly message?: string;
  /** Every rank of this node, in rank order. */
  readonly exits: readonly RankExit[];
  /** Wall time of the whole launch. */
  readonly elapsedMs: number;
}

/** The variables {@link launch} sets for process `index` of this node. */
export interface RankPlacement {
  /** Global rank of the process. */
  readonly rank: number;
  /** Variables set for it (on top of the inherited environment). */
  readonly env: Readonly<Record<string, string>>;
}

/** The options {@link placeRanks} reads. */
export type PlacementOptions = Pick<
  LaunchOptions,
  "gpus" | "ranksPerGpu" | "nnodes" | "nodeRank" | "emulateNodes" | "jobId"
>;

/** Validated shape of a launch. */
export interface LaunchShape {
  /** GPUs on this host. */
  readonly gpus: number;
  /** Processes per GPU. */
  readonly ranksPerGpu: number;
  /** Processes on this host (`gpus × ranksPerGpu`). */
  readonly procs: number;
  /** Nodes in the world. */
  readonly nnodes: number;
  /** This node's index. */
  readonly nodeRank: number;
  /** Emulated nodes on this host (1: none). */
  readonly emulate: number;
}

/**
 * Computes each local process's rank and variables (exported so the mapping
 * is testable without starting anything). Process i of this host drives GPU
 * ⌊i/ranksPerGpu⌋; with `emulateNodes` M, the host's processes form M nodes
 * of consecutive ranks. NCCL_HOSTID is set per process when ranksPerGpu > 1
 * (NCCL refuses two ranks on one GPU with one host hash), else per emulated
 * node when M > 1, else not at all.
 *
 * @example
 * ```ts
 * import { placeRanks } from "./launch_plan.ts";
 * const p = placeRanks({ gpus: 1, ranksPerGpu: 4, emulateNodes: 2, jobId: "j" }, "127.0.0.1:1234");
 * console.assert(p[3].env.NODE_RANK === "1" && p[3].env.LOCAL_RANK === "1");
 * console.assert(p[3].env.WEFT_DEVICE === "0" && p[3].env.NCCL_HOSTID === "weft-j-rank-3");
 * ```
 */
export function placeRanks(options: PlacementOptions, store: string): RankPlacement[] {
  const { ranksPerGpu, procs, nnodes, nodeRank, emulate } = validateLaunch(options);
  const jobId = options.jobId ?? "job";
  const perNode = procs / emulate;
  return Array.from({ length: procs }, (_, i) => {
    const rank = nodeRank * procs + i;
    const node = Math.floor(i / perNode);
    const env: Record<string, string> = {
      [ENV.rank]: String(rank),
      [ENV.world]: String(nnodes * procs),
      [ENV.localRank]: String(i % perNode),
      [ENV.localWorld]: String(perNode),
      [ENV.nodeRank]: String(emulate > 1 ? node : nodeRank),
      [ENV.device]: String(Math.floor(i / ranksPerGpu)),
      [ENV.store]: store,
    };
    if (ranksPerGpu > 1) env.NCCL_HOSTID = `weft-${jobId}-rank-${rank}`;
    else if (emulate > 1) env.NCCL_HOSTID = `weft-${jobId}-node-${node}`;
    return { rank, env };
  });
}

/**
 * Checks the counts of a launch; throws a {@link WeftError} naming the flag
 * and the fix.
 *
 * @example
 * ```ts
 * import { validateLaunch } from "./launch_plan.ts";
 * console.assert(validateLaunch({ gpus: 2, ranksPerGpu: 3 }).procs === 6);
 * ```
 */
export function validateLaunch(options: PlacementOptions): LaunchShape {
  const gpus = options.gpus;
  const ranksPerGpu = options.ranksPerGpu ?? 1;
  const nnodes = options.nnodes ?? 1;
  const nodeRank = options.nodeRank ?? 0;
  const emulate = options.emulateNodes ?? 1;
  const bad = (field: string, problem: string, fix: string): never => {
    throw new WeftError({ field, problem, fix });
  };
  if (!Number.isInteger(gpus) || gpus < 1) bad("--gpus", `is ${gpus}`, "pass --gpus N with N ≥ 1");
  if (!Number.isInteger(ranksPerGpu) || ranksPerGpu < 1) {
    bad(
      "--ranks-per-gpu",
      `is ${ranksPerGpu}`,
      "pass --ranks-per-gpu k with an integer k ≥ 1 (default 1)",
    );
  }
  const procs = gpus * ranksPerGpu;
  if (!Number.isInteger(nnodes) || nnodes < 1) {
    bad("--nnodes", `is ${nnodes}`, "pass --nnodes K with K ≥ 1");
  }
  if (!Number.isInteger(nodeRank) || nodeRank < 0 || nodeRank >= nnodes) {
    bad("--node-rank", `is ${nodeRank} with --nnodes ${nnodes}`, "pass 0 ≤ --node-rank < --nnodes");
  }
  if (!Number.isInteger(emulate) || emulate < 1) {
    bad("--emulate-nodes", `is ${emulate}`, "pass --emulate-nodes M with an integer M ≥ 1");
  }
  if (procs % emulate !== 0) {
    bad(
      "--emulate-nodes",
      `is ${emulate}, which does not divide the ${procs} processes of --gpus ${gpus} × --ranks-per-gpu ${ranksPerGpu}`,
      "pass a divisor of N·k, or change --gpus/--ranks-per-gpu so that N·k is a multiple of M",
    );
  }
  if (emulate > 1 && nnodes > 1) {
    bad(
      "--emulate-nodes",
      `cannot be combined with --nnodes ${nnodes}`,
      "emulate nodes on one host only: drop --nnodes/--node-rank/--master, or drop --emulate-nodes",
    );
  }
  return { gpus, ranksPerGpu, procs, nnodes, nodeRank, emulate };
}

/**
 * The interface node 0's store binds: `bind` when given, else the host of
 * `master` (the address other nodes reach), else 127.0.0.1. Never a
 * wildcard unless asked for with `bind`.
 *
 * @example
 * ```ts
 * import { storeBindHost } from "./launch_plan.ts";
 * console.assert(storeBindHost({}) === "127.0.0.1");
 * console.assert(storeBindHost({ master: "10.0.0.1:29500" }) === "10.0.0.1");
 * ```
 */
export function storeBindHost(options: Pick<LaunchOptions, "master" | "bind">): string {
  if (options.bind !== undefined) return options.bind;
  if (options.master === undefined) return "127.0.0.1";
  const parsed = parseAddress(options.master);
  if (parsed === undefined) {
    throw new WeftError({
      field: "--master",
      problem: `"${options.master}" is not host:port`,
      fix: "pass e.g. --master 10.0.0.1:29500",
    });
  }
  return parsed.hostname;
}

/** Fewest characters a user-given secret must have. */
export const MIN_SECRET_LENGTH = 16;

/**
 * The job's store secret: `given` (the `--secret` flag, else
 * WEFT_STORE_SECRET of the launcher's environment) when set, else a fresh
 * random one (32 hex characters) on a single host. A multi-node launch
 * needs it given, since every node's launcher must present the same one.
 *
 * @example
 * ```ts
 * import { resolveSecret } from "./launch_plan.ts";
 * console.assert(/^[0-9a-f]{32}$/.test(resolveSecret(undefined, 1)));
 * ```
 */
export function resolveSecret(given: string | undefined, nnodes: number): string {
  if (given === undefined || given === "") {
    if (nnodes > 1) {
      throw new WeftError({
        field: "--secret",
        problem: `is required with --nnodes ${nnodes}`,
        fix:
          "pass the same --secret (or WEFT_STORE_SECRET) to every node's launcher, e.g. from `openssl rand -hex 16`",
      });
    }
    return randomHex(16);
  }
  if (given.length < MIN_SECRET_LENGTH) {
    throw new WeftError({
      field: "--secret",
      problem: `has ${given.length} characters`,
      fix:
        `pass at least ${MIN_SECRET_LENGTH} random characters, e.g. from \`openssl rand -hex 16\``,
    });
  }
  return given;
}

/** `bytes` random bytes as lowercase hex. */
export function randomHex(bytes: number): string {
  const raw = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(raw, (b) => b.toString(16).padStart(2, "0")).join("");
}
