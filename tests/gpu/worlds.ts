/**
 * The worlds `deno task test:gpu` runs, and the `--worlds` syntax that
 * names them: `GPUS[xRANKS_PER_GPU][nNODES]`, comma-separated.
 *
 *   2       2 GPUs, one rank each, one node
 *   4n2     4 GPUs as 2 emulated nodes of 2 (distinct NCCL_HOSTID per node)
 *   1x4n2   1 GPU, 4 ranks on it, as 2 emulated nodes × 2 ranks
 *   1x4n4   1 GPU, 4 ranks on it, as 4 emulated nodes × 1 rank
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";

/** One world of the GPU tests: how the launcher starts it. */
export interface World {
  /** The spec as written (`1x4n2`). */
  readonly spec: string;
  /** GPUs it needs. */
  readonly gpus: number;
  /** Ranks per GPU (`--ranks-per-gpu`). */
  readonly ranksPerGpu: number;
  /** Emulated nodes (`--emulate-nodes`), 1 for one node. */
  readonly nodes: number;
  /** gpus × ranksPerGpu. */
  readonly ranks: number;
  /** Ranks per node: the plans' gpusPerNode. */
  readonly ranksPerNode: number;
  /** How the report names it. */
  readonly label: string;
}

/** Worlds run when `--worlds` is not given (those there are GPUs for). */
export const DEFAULT_WORLDS = "2,4,8,2n2,4n2,1x4n2,1x4n4";

const usage = "write GPUS[xRANKS_PER_GPU][nNODES], comma-separated, e.g. `2,4,4n2,1x4n2,1x4n4`";

/**
 * Parses a `--worlds` value.
 *
 * @throws {WeftError} naming `--worlds` for a malformed spec or nodes that do
 * not divide the ranks.
 * @example
 * ```ts
 * import { parseWorlds } from "./worlds.ts";
 * const [a, b] = parseWorlds("4,1x4n2");
 * console.assert(a.ranks === 4 && a.nodes === 1 && a.label === "world=4");
 * console.assert(b.gpus === 1 && b.ranks === 4 && b.ranksPerNode === 2);
 * console.assert(b.label === "world=4(2 nodes × 2, 4 ranks on 1 GPU)");
 * ```
 */
export function parseWorlds(text: string): World[] {
  return text.split(",").map((s) => s.trim()).filter((s) => s !== "").map((spec) => {
    const m = /^(\d+)(?:x(\d+))?(?:n(\d+))?$/.exec(spec);
    if (m === null) {
      throw new WeftError({ field: "--worlds", problem: `"${spec}" is not a world`, fix: usage });
    }
    const gpus = Number(m[1]);
    const ranksPerGpu = Number(m[2] ?? 1);
    const nodes = Number(m[3] ?? 1);
    const ranks = gpus * ranksPerGpu;
    if (gpus < 1 || ranksPerGpu < 1 || nodes < 1 || ranks % nodes !== 0) {
      throw new WeftError({
        field: "--worlds",
        problem:
          `"${spec}": ${nodes} node(s) do not divide ${gpus} GPU(s) × ${ranksPerGpu} rank(s)`,
        fix: usage,
      });
    }
    const ranksPerNode = ranks / nodes;
    const shared = ranksPerGpu > 1 ? `, ${ranks} ranks on ${gpus} GPU${gpus > 1 ? "s" : ""}` : "";
    const label = nodes === 1 && ranksPerGpu === 1
      ? `world=${ranks}`
      : `world=${ranks}(${nodes > 1 ? `${nodes} nodes × ${ranksPerNode}` : "1 node"}${shared})`;
    return { spec, gpus, ranksPerGpu, nodes, ranks, ranksPerNode, label };
  });
}

/**
 * The line printed under every time measured in `world`: ranks that share a
 * GPU, or emulated nodes talking NCCL over sockets, time nothing real.
 *
 * @example
 * ```ts
 * import { parseWorlds, timingCaveat } from "./worlds.ts";
 * console.assert(timingCaveat(parseWorlds("2")[0]) === "");
 * console.assert(timingCaveat(parseWorlds("1x4n2")[0]).includes("not a performance figure"));
 * ```
 */
export function timingCaveat(world: World): string {
  if (world.ranksPerGpu > 1) {
    return ` (not a performance figure: ${world.ranksPerGpu} ranks share one GPU, NCCL over sockets)`;
  }
  if (world.nodes > 1) return " (not a performance figure: emulated nodes, NCCL over sockets)";
  return "";
}
