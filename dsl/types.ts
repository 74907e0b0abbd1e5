/**
 * The plain data that flows between weft's layers: the pattern (what shuffle),
 * the plan (a pattern bound to a topology) and the layout descriptor (one
 * batch's routing turned into index arrays).
 *
 * Everything here is data, not behaviour: the DSL builders produce a
 * {@link PatternSpec}, `compile` turns it into a {@link PlanSpec}, and the
 * layout compiler turns a plan plus each rank's `topkIdx` into one
 * {@link RankLayout} per rank. The Simulator and the GPU engine both consume
 * these; the GPU engine's own layout kernels must produce arrays equal to the
 * CPU layout compiler's.
 *
 * @module
 */

/**
 * Elements per FP8 scale block: a quantized row carries one f32 scale per
 * QUANT_BLOCK elements, so the hidden size of an e4m3 pattern is a multiple
 * of it (lib/core/fp8.ts defines the bits).
 */
export const QUANT_BLOCK = 128;

/** Element type of the hidden-state rows. */
export type DType = "bf16" | "f16" | "f32";

/** Bytes per element of each {@link DType}. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = Object.freeze({
  bf16: 2,
  f16: 2,
  f32: 4,
});

/**
 * Element type of a tensor weft takes or hands out: a {@link DType}, `e4m3`
 * (FP8, one byte) for the rows of a quantized dispatch, or `i32` for routing
 * ids (`topkIdx`), so a router's output can stay on the GPU. Rows of hidden
 * states are never `i32`.
 */
export type TensorDType = DType | "e4m3" | "i32";

/** Bytes per element of each {@link TensorDType}. */
export const TENSOR_DTYPE_BYTES: Readonly<Record<TensorDType, number>> = Object.freeze({
  ...DTYPE_BYTES,
  e4m3: 1,
  i32: 4,
});

/**
 * How dispatch carries rows, when not in the pattern's dtype.
 * - `e4m3`: each row is quantized at its source to FP8 E4M3 with one
 *   power-of-two f32 scale per 128 elements (lib/fp8.ts defines the bits);
 *   the bytes and scales cross the interconnect (about half of bf16) and
 *   land as `recv` (e4m3) and `recvScales` ([R × H/128] f32). Combine is
 *   unchanged: the experts' outputs come back in the pattern's dtype.
 */
export type Quantize = "e4m3";

/**
 * Which rank of a remote node forwards a source's rows there (dedupe `node`,
 * more than one node; see dsl/balance.ts).
 * - `rail` (the default): the rank with the source's local index, f(s, m) =
 *   m·gpn + local(s): every cross-node row stays on its source's rail.
 * - `greedy`: FUSCO's balancer: per batch, each node's GPUs sorted by
 *   cross-node send volume and rotated by the node index, so the heaviest
 *   senders of different nodes share no forwarder.
 * The table moves bytes only: dispatch and combine outputs are the same
 * bits with either. With dedupe `none`/`device` or one node there are no
 * forwarders and the setting is accepted and inert.
 */
export type Balance = "rail" | "greedy";

/**
 * How many copies of a token cross the interconnect.
 * - `none`: one per (token, expert);
 * - `device`: one per (token, destination device);
 * - `node`: one per (token, destination node), fanned out inside the node by
 *   a forwarder; combine reduces at the same forwarder before crossing back.
 *   The combine order follows: a token's device partials (ascending k) of one
 *   remote node are summed at its forwarder in ascending rank, and that sum
 *   takes the node's turn in the home's ascending-rank sum.
 */
export type Dedupe = "none" | "device" | "node";

/**
 * Row order of the dispatch output on each rank.
 * - `expert-major`: rows of local expert 0, then 1, …; inside one local expert
 *   by (source rank, source token, k slot) ascending.
 * - `rank-major`: rows grouped by source rank ascending, then by local expert,
 *   then (source token, k slot) ascending. Same rows, different order.
 */
export type ReceiveOrder = "expert-major" | "rank-major";

/** `weighted`: out[t] = Σ_k w[t,k]·y[row(t,k)]; `sum`: the same without w. */
export type CombineOp = "weighted" | "sum";

/**
 * Where experts live, before replicas are added.
 * - `byDevice`: contiguous blocks, expert e on rank ⌊e / (E/W)⌋ (E divisible by W);
 * - `roundRobin`: expert e on rank e mod W;
 * - `table`: an explicit owner rank per expert (`owners.length === E`).
 * Local expert indices on a rank follow ascending global expert id.
 */
export type BasePlacement =
  | { readonly kind: "byDevice" }
  | { readonly kind: "roundRobin" }
  | { readonly kind: "table"; readonly owners: readonly number[] };

/**
 * Extra copies of hot experts. Each expert in `experts` gets `copies` replicas
 * in total (its base owner plus `copies - 1` more), the extra ones on ranks
 * `(owner + i·⌈W/copies⌉) mod W` for i = 1… (skipping ranks that already hold
 * it, next rank up). A replica is appended after the rank's base local
 * experts, in ascending (global expert id).
 *
 * Which replica a token uses (deterministic, the same on CPU and GPU), for a
 * token t on source rank s whose expert e has replicas on ranks
 * R = [r0 < r1 < …]:
 *   1. the replica on s, if s ∈ R;
 *   2. else, if some replicas are on s's node, those (in rank order) indexed
 *      by t mod (their count);
 *   3. else R[t mod |R|].
 */
export interface Replication {
  /** Global ids of the hot experts to replicate (distinct, < experts). */
  readonly experts: readonly number[];
  /** Copies of each such expert in total, its owner's included (2 ≤ copies ≤ world). */
  readonly copies: number;
}

/** The shuffle pattern: what goes where. Immutable plain data, YAML/JSON round-trips. */
export interface PatternSpec {
  /** Global expert count E; undefined until given or taken from the compile context. */
  readonly experts?: number;
  /** Where experts live, before replicas. */
  readonly placement: BasePlacement;
  /** Extra copies of hot experts, if any. */
  readonly replicas?: Replication;
  /** Experts per token K. */
  readonly topK: number;
  /** How many copies of a token cross the interconnect. */
  readonly dedupe: Dedupe;
  /** Row order of the dispatch output on each rank. */
  readonly receive: ReceiveOrder;
  /** How combine merges the expert outputs of a token. */
  readonly combine: CombineOp;
  /** Element type of the rows. */
  readonly dtype: DType;
  /** Dispatch's row format when quantized (absent: rows move in `dtype`). */
  readonly quantize?: Quantize;
  /** The forwarder table of dedupe `node` (absent: `"rail"`). */
  readonly balance?: Balance;
  /** Hidden size H (elements per row); undefined until given or taken from the compile context. */
  readonly hidden?: number;
}

/** Topology a pattern is compiled against. */
export interface CompileContext {
  /** Number of ranks (one GPU each). */
  readonly world: number;
  /** GPUs per node; `world` must be a multiple. Defaults to `world` (one node). */
  readonly gpusPerNode?: number;
  /** Expert count, if the pattern does not state it. */
  readonly experts?: number;
  /** Hidden size, if the pattern does not state it. */
  readonly hidden?: number;
}

/**
 * A pattern bound to a topology: every field resolved, the placement
 * compiled to flat tables. A *slot* is one (rank, local expert) pair that
 * holds a copy of some global expert; replicas make several slots per expert.
 */
export interface PlanSpec {
  /** The pattern this plan was compiled from. */
  readonly pattern: PatternSpec;
  /** Number of ranks W (one GPU each). */
  readonly world: number;
  /** GPUs per node; divides `world`. */
  readonly gpusPerNode: number;
  /** Number of nodes: world / gpusPerNode. */
  readonly nodes: number;
  /** Global expert count E, resolved. */
  readonly experts: number;
  /** Experts per token K. */
  readonly topK: number;
  /** Hidden size H (elements per row), resolved. */
  readonly hidden: number;
  /** Element type of the rows. */
  readonly dtype: DType;
  /** Dispatch's row format when quantized (absent: rows move in `dtype`). */
  readonly quantize?: Quantize;
  /** How many copies of a token cross the interconnect. */
  readonly dedupe: Dedupe;
  /** The forwarder table of dedupe `node` (absent: `"rail"`). */
  readonly balance?: Balance;
  /** Row order of the dispatch output on each rank. */
  readonly receive: ReceiveOrder;
  /** How combine merges the expert outputs of a token. */
  readonly combine: CombineOp;
  /** [world] local expert slots on each rank (base experts + replicas). */
  readonly localExperts: Int32Array;
  /** [world+1] prefix sum of localExperts: global slot id = slotBase[rank] + local. */
  readonly slotBase: Int32Array;
  /** [slots] global expert id held by each slot. */
  readonly slotExpert: Int32Array;
  /** [experts+1] CSR offsets into replicaSlots. */
  readonly replicaStart: Int32Array;
  /** Global slot ids of each expert's replicas, per expert in ascending rank. */
  readonly replicaSlots: Int32Array;
}

/** Rows and bytes one source rank sends to one destination rank. */
export interface LinkTraffic {
  /** Source rank. */
  readonly src: number;
  /** Destination rank. */
  readonly dst: number;
  /** Rows that cross this link under the plan's dedupe. */
  readonly rows: number;
  /** Rows that would cross with dedupe `none` (one per (token, expert)). */
  readonly rowsNoDedupe: number;
  /** `rows` in bytes (rows × the bytes a row crosses as: `dispatchRowBytes` in layout.ts). */
  readonly bytes: number;
  /** `rowsNoDedupe` in bytes. */
  readonly bytesNoDedupe: number;
  /**
   * Dedupe `node` only (0 otherwise): rows `src` forwards to `dst` on behalf of
   * ranks on other nodes (the NVLink fan-out inside `src`'s node), counted apart
   * from `rows` so the inter-node link is counted once.
   */
  readonly forwardedRows: number;
  /** `forwardedRows` in bytes. */
  readonly forwardedBytes: number;
}

/**
 * One rank's layout descriptor for one batch. Source-side arrays describe
 * this rank's own tokens; destination-side arrays describe the rows this rank
 * receives. All index arrays are Int32Array.
 *
 * Who reads it: the Simulator (lib/sim: dispatch_rows.ts the receive side,
 * combine_math.ts destRank/destRow/forwardRank, protocol_*.ts the forwarder
 * side), the traffic summaries (`traffic`, lib/core/traffic.ts), the cost
 * model and explorer (lib/model/rank_traffic.ts: the links and combineFrom),
 * `layoutToJSON`/`layoutToYAML` and the text view (dsl/layout_text.ts) for
 * people exploring a pattern. The GPU engines compute the same arrays on the
 * device (native/src/route.cu, layout.cu, hier_tables.cu) and never read
 * this record; tests compare the two. sendOffsets/sendToken, combineStart and
 * expertOffsets are there for readers of the descriptor (what a rank sends,
 * the home's CSR, expert-major starts), not for an engine.
 */
export interface RankLayout {
  /** The rank this descriptor is for. */
  readonly rank: number;
  /** T_r: tokens on this rank. */
  readonly tokens: number;

  // ---- source side: where this rank's (token, k) pairs go ----
  /** [T·K] global slot each (t,k) resolves to, -1 for a `-1` slot. */
  readonly slotOf: Int32Array;
  /** [T·K] destination rank of each (t,k), -1 for none. */
  readonly destRank: Int32Array;
  /** [T·K] row index in the destination rank's receive buffer, -1 for none. */
  readonly destRow: Int32Array;
  /**
   * Transfers this rank sends, grouped by destination rank ascending, token
   * ascending inside a group (dedupe `device`: one per distinct (t, d);
   * `none`: one per (t,k), k ascending; `node`: one per (t, destination
   * node), sent to the node's forwarder rank — see `forwardRank`).
   * [W+1] offsets into sendToken by destination rank.
   */
  readonly sendOffsets: Int32Array;
  /** Source token of each transfer. */
  readonly sendToken: Int32Array;
  /**
   * [W] the rank a transfer meant for destination d is sent to: d itself,
   * except with dedupe `node` for d on another node, where it is that node's
   * forwarder in the batch's forwarder table (the plan's `balance`,
   * dsl/balance.ts): with `rail` the rank there with this rank's local
   * index (rank mod gpusPerNode), so every cross-node row travels on the
   * same rail; with `greedy` the member of this rank's group on that node.
   */
  readonly forwardRank: Int32Array;

  /**
   * Combine mapping on the home side: token t's partial sums come back from
   * its destination devices (dedupe `node`: the forwarders of other nodes and
   * the devices of its own node) in ascending rank; CSR over tokens, [T+1]
   * offsets into combineFrom.
   */
  readonly combineStart: Int32Array;
  /** Rank each partial of a token comes from, ascending per token. */
  readonly combineFrom: Int32Array;

  // ---- destination side: the rows this rank receives ----
  /** R_d: rows in the receive buffer (one per (token, expert) pair placed here). */
  readonly recvRows: number;
  /** [L_d] rows per local expert. */
  readonly expertCounts: Int32Array;
  /** [L_d+1] prefix sum of expertCounts (expert-major start of each local expert). */
  readonly expertOffsets: Int32Array;
  /** [R_d] source rank of each received row, in receive order. */
  readonly srcRank: Int32Array;
  /** [R_d] source token of each received row. */
  readonly srcToken: Int32Array;
  /** [R_d] k slot of each received row in its source token's top-k. */
  readonly srcK: Int32Array;
  /** [R_d] local expert of each received row. */
  readonly localExpert: Int32Array;

  // ---- forwarder side (dedupe `node` only; empty arrays otherwise) ----
  /**
   * [W+1] offsets into forwardToken by source rank: the transfers this rank
   * receives as forwarder for its node (from the ranks on other nodes whose
   * forwarder it is: with `rail` those with the same local index), in each
   * source's send order (token ascending). This is
   * the order of the forwarder's staging buffer.
   */
  readonly forwardOffsets: Int32Array;
  /** [F] source token of each staged (forwarded) row. */
  readonly forwardToken: Int32Array;
  /**
   * [F+1] CSR into forwardDestRank/forwardDestRow/forwardK: the (t,k) pairs of
   * each staged row that land on this node, by destination rank ascending,
   * then k ascending — the order combine reduces them in at the forwarder.
   */
  readonly forwardStart: Int32Array;
  /** Destination rank (on this node, possibly this rank) of each fan-out pair. */
  readonly forwardDestRank: Int32Array;
  /** Row in that destination's receive buffer. */
  readonly forwardDestRow: Int32Array;
  /** k slot of the pair in its source token's top-k (for the routing weight). */
  readonly forwardK: Int32Array;

  // ---- statistics ----
  /** [W] rows this rank sends to each destination under the plan's dedupe. */
  readonly sendRowsTo: Int32Array;
  /** [W] rows this rank would send to each destination with dedupe `none`. */
  readonly sendRowsToNoDedupe: Int32Array;
  /**
   * [W] dedupe `node`: rows this rank forwards to each rank of its node (one
   * per staged row and distinct destination other than itself); zeros otherwise.
   */
  readonly forwardRowsTo: Int32Array;
}

/** The whole batch's layout: one descriptor per rank plus link statistics. */
export interface BatchLayout {
  /** The plan the batch was laid out for. */
  readonly plan: PlanSpec;
  /** One descriptor per rank, in rank order. */
  readonly ranks: readonly RankLayout[];
  /** One entry per ordered (src, dst) pair with src ≠ dst and any traffic. */
  readonly links: readonly LinkTraffic[];
}
