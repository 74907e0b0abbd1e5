/**
 * The node layout of a {@link Communicator} (which ranks share a symmetric
 * heap over CUDA IPC) and the exchange of heap handles among a node's ranks.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { IPC_HANDLE_BYTES } from "../native/pointers.ts";
import { native } from "../native/loader.ts";
import { unwrap } from "../native/status.ts";
import type { StoreClient } from "./store.ts";

/** What {@link topology} reads: the rank and the node options of `Communicator.create`. */
export interface TopologyOptions {
  readonly rank: number;
  readonly world: number;
  readonly localRank: number;
  readonly localWorld?: number;
  readonly nodeRank?: number;
}

/** A rank's node layout: one node unless `localWorld` < `world`. */
export interface Topology {
  readonly localRank: number;
  readonly localWorld: number;
  readonly node: number;
  readonly nodes: number;
}

/**
 * Checks the node options and returns the layout; a WeftError names the
 * field that does not fit.
 *
 * @example
 * ```ts
 * import { topology } from "./communicator_topology.ts";
 * const t = topology({ rank: 3, world: 4, localRank: 1, localWorld: 2 });
 * console.assert(t.node === 1 && t.nodes === 2);
 * ```
 */
export function topology(options: TopologyOptions): Topology {
  const { rank, world, localRank } = options;
  if (options.localWorld === undefined || options.localWorld === world) {
    if (options.nodeRank !== undefined && options.nodeRank !== 0) {
      throw new WeftError({
        field: "nodeRank",
        rank,
        problem: `is ${options.nodeRank} with one node (localWorld = world = ${world})`,
        fix: "pass localWorld (ranks per node) as well, or leave nodeRank out",
      });
    }
    return { localRank: rank, localWorld: world, node: 0, nodes: 1 };
  }
  const localWorld = options.localWorld;
  if (
    !Number.isInteger(localWorld) || localWorld < 1 || localWorld > 32 || world % localWorld !== 0
  ) {
    throw new WeftError({
      field: "localWorld",
      rank,
      problem: `is ${localWorld} with world ${world}`,
      fix:
        "pass the ranks per node: an integer in [1, 32] that divides world (every node the same size)",
    });
  }
  const node = Math.floor(rank / localWorld);
  if (localRank !== rank % localWorld) {
    throw new WeftError({
      field: "localRank",
      rank,
      problem: `is ${localRank}, but rank ${rank} with ${localWorld} ranks per node is local rank ${
        rank % localWorld
      }`,
      fix:
        "nodes are consecutive ranks: pass localRank = rank % localWorld (the launcher's LOCAL_RANK)",
    });
  }
  if (options.nodeRank !== undefined && options.nodeRank !== node) {
    throw new WeftError({
      field: "nodeRank",
      rank,
      problem:
        `is ${options.nodeRank}, but rank ${rank} with ${localWorld} ranks per node is on node ${node}`,
      fix: "pass nodeRank = floor(rank / localWorld) (the launcher's NODE_RANK)",
    });
  }
  return { localRank, localWorld, node, nodes: world / localWorld };
}

/**
 * Publishes this rank's heap handle and gathers those of its node's ranks
 * (local rank order), keyed by node: only ranks of one node map each
 * other's heaps.
 */
export async function exchangeIpcHandles(
  store: StoreClient,
  name: string,
  handle: Deno.PointerValue,
  rank: number,
  topo: Topology,
  timeoutMs: number,
): Promise<Uint8Array> {
  const mine = new Uint8Array(IPC_HANDLE_BYTES);
  unwrap(native().weft_comm_ipc_handle(handle, mine), "weft_comm_ipc_handle", { rank });
  const key = topo.nodes > 1 ? `${name}/ipc/node-${topo.node}` : `${name}/ipc`;
  const all = await store.allGather(key, topo.localRank, topo.localWorld, mine, timeoutMs);
  const handles = new Uint8Array(topo.localWorld * IPC_HANDLE_BYTES);
  all.forEach((h, l) => {
    if (h.length !== IPC_HANDLE_BYTES) {
      throw new WeftError({
        field: "peer",
        rank: topo.node * topo.localWorld + l,
        problem: `published an IPC handle of ${h.length} bytes, not ${IPC_HANDLE_BYTES}`,
        fix: "run the same weft version on every rank",
      });
    }
    handles.set(h, l * IPC_HANDLE_BYTES);
  });
  return handles;
}
