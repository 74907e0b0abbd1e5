/**
 * Byte counts of the hierarchical protocol's stages, per link and per rank,
 * for benchmarks and explorers: what crosses the NICs between nodes and
 * what moves over NVLink inside a node.
 *
 * @module
 */

/**
 * A stage's transfers. Dispatch: `nic` (a source's packed rows to a remote
 * node's forwarder), `fan-out` (a forwarder's staged rows to the other
 * ranks of its node), `own-node` (a source's rows read straight by another
 * rank of its own node). Combine: `partial` (a device's partial to the
 * forwarder, or to the home on its own node), `return` (a forwarder's
 * reduced partials back to the home, between nodes).
 */
export type Stage = "nic" | "fan-out" | "own-node" | "partial" | "return";

/** Rows and bytes that one stage moves from one rank to another. */
export interface StageLink {
  /** The stage. */
  readonly stage: Stage;
  /** Sending rank. */
  readonly src: number;
  /** Receiving rank. */
  readonly dst: number;
  /** Rows moved: dispatch rows (payload + meta), or combine partial rows. */
  readonly rows: number;
  /** Payload bytes: rows × dispatchRowBytes, or rows × hidden × the wire dtype's size. */
  readonly bytes: number;
  /** Meta bytes of dispatch rows ({t, (slot, ord, w) per k}: 4·(1 + 3K) a row); 0 for combine. */
  readonly metaBytes: number;
}

/** One rank's totals (payload + meta bytes) over the NICs and over NVLink. */
export interface RankStageBytes {
  /** The rank. */
  readonly rank: number;
  /** Bytes this rank sends to other nodes. */
  readonly nicSend: number;
  /** Bytes this rank receives from other nodes. */
  readonly nicRecv: number;
  /** Bytes this rank sends to other ranks of its node. */
  readonly nvlinkSend: number;
  /** Bytes this rank receives from other ranks of its node. */
  readonly nvlinkRecv: number;
}

/** The stage byte counts of one staged dispatch or combine. */
export interface StageTraffic {
  /** Which call moved them. */
  readonly direction: "dispatch" | "combine";
  /** One entry per (stage, src, dst) with rows, ordered by stage, then src, then dst. */
  readonly links: readonly StageLink[];
  /** One entry per rank, in rank order. */
  readonly ranks: readonly RankStageBytes[];
}

const STAGES: readonly Stage[] = ["nic", "fan-out", "own-node", "partial", "return"];

/** Accumulates rows per (stage, src, dst) while a staged call runs. */
export class TrafficCounter {
  readonly #world: number;
  readonly #rowBytes: number;
  readonly #metaBytes: number;
  readonly #rows = new Map<number, number>();

  /** A counter for `world` ranks whose rows are `rowBytes` of payload and `metaBytes` of meta. */
  constructor(world: number, rowBytes: number, metaBytes: number) {
    this.#world = world;
    this.#rowBytes = rowBytes;
    this.#metaBytes = metaBytes;
  }

  /** Count `rows` more rows of `stage` from `src` to `dst`. */
  add(stage: Stage, src: number, dst: number, rows = 1): void {
    const key = (STAGES.indexOf(stage) * this.#world + src) * this.#world + dst;
    this.#rows.set(key, (this.#rows.get(key) ?? 0) + rows);
  }

  /** The links and per-rank totals counted so far. */
  finish(direction: StageTraffic["direction"], nodeOf: (rank: number) => number): StageTraffic {
    const W = this.#world;
    const links = [...this.#rows.entries()].sort((a, b) => a[0] - b[0]).map(([key, rows]) => ({
      stage: STAGES[Math.floor(key / (W * W))],
      src: Math.floor(key / W) % W,
      dst: key % W,
      rows,
      bytes: rows * this.#rowBytes,
      metaBytes: rows * this.#metaBytes,
    }));
    const ranks = Array.from({ length: W }, (_, rank) => ({
      rank,
      nicSend: 0,
      nicRecv: 0,
      nvlinkSend: 0,
      nvlinkRecv: 0,
    }));
    for (const l of links) {
      const b = l.bytes + l.metaBytes;
      if (nodeOf(l.src) !== nodeOf(l.dst)) {
        ranks[l.src].nicSend += b;
        ranks[l.dst].nicRecv += b;
      } else {
        ranks[l.src].nvlinkSend += b;
        ranks[l.dst].nvlinkRecv += b;
      }
    }
    return { direction, links, ranks };
  }
}
