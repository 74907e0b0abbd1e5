/**
 * A machine as the cost model sees it: GPUs per node, nodes, and the rate of
 * each link class a shuffle uses (NVLink inside a node, NICs between nodes,
 * HBM for the copies every GPU does locally).
 *
 * Rates are what an all-to-all actually reaches, not line rates: on our
 * 4×H200 (DESIGN.md, bench/RESULTS.md 10:04 probe) every GPU writing to every
 * other reaches 355 GB/s per direction and reading 320, against 478 GB/s of
 * NVLink line rate. A NIC is taken at what NCCL reaches on one 400 Gb/s CX7
 * (48 of 50 GB/s, anchors-2026-12.md §2), and a GPU drives one NIC (NCCL's
 * all-to-all does not aggregate several NICs per GPU), so the per-GPU
 * inter-node rate is one NIC's unless NICs are fewer than GPUs.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";

/** The machine: sizes and per-GPU rates in GB/s (10⁹ bytes per second). */
export interface Topology {
  /** Preset name or "custom". */
  readonly name: string;
  /** GPUs in one node (one rank each). */
  readonly gpusPerNode: number;
  /** Nodes. */
  readonly nodes: number;
  /** NVLink GB/s one GPU writes (pushes) to its peers under all-to-all, per direction. */
  readonly nvlinkWriteGBs: number;
  /** NVLink GB/s one GPU reads (pulls) from its peers under all-to-all, per direction. */
  readonly nvlinkReadGBs: number;
  /** NICs per node (0 for a single-node machine). */
  readonly nicsPerNode: number;
  /** GB/s one NIC reaches per direction (what NCCL gets, not the line rate). */
  readonly nicGBs: number;
  /** Local HBM copy rate, read and write bytes both counted, GB/s. */
  readonly hbmGBs: number;
  /** Where the numbers come from. */
  readonly source: string;
}

/** The named machines. */
export const TOPOLOGIES: Readonly<Record<string, Topology>> = Object.freeze({
  h200x4: {
    name: "h200x4",
    gpusPerNode: 4,
    nodes: 1,
    nvlinkWriteGBs: 355,
    nvlinkReadGBs: 320,
    nicsPerNode: 0,
    nicGBs: 0,
    hbmGBs: 4200,
    source: "measured: nvidia-h200-x4, bench/RESULTS.md 2026-11-22 10:04 (fabric probe), DESIGN.md",
  },
  h200x8: {
    name: "h200x8",
    gpusPerNode: 8,
    nodes: 1,
    nvlinkWriteGBs: 342,
    nvlinkReadGBs: 321,
    nicsPerNode: 0,
    nicGBs: 0,
    hbmGBs: 4200,
    source: "measured: nvidia-h200-x8 (NVSwitch), bench/RESULTS.md 2026-11-22 09:45–10:47",
  },
  "h100-8x8-roce": {
    name: "h100-8x8-roce",
    gpusPerNode: 8,
    nodes: 8,
    // H100 SXM has the H200's NVLink4 (18 links): take our measured all-to-all rates.
    nvlinkWriteGBs: 342,
    nvlinkReadGBs: 321,
    nicsPerNode: 10,
    nicGBs: 48,
    // H100 HBM3 3.35 TB/s peak at the H200's measured copy fraction (4.2 of 4.8).
    hbmGBs: 2930,
    source: "FUSCO's testbed (fusco.md §7): 8 nodes × 8 H100, NVLink4, 10 × 400 Gb CX7 RoCE",
  },
});

/**
 * Inter-node GB/s one GPU reaches per direction: one NIC each (rail-aligned),
 * shared when a node has fewer NICs than GPUs.
 *
 * @example
 * ```ts
 * import { nicGBsPerGpu, TOPOLOGIES } from "./topology.ts";
 * console.assert(nicGBsPerGpu(TOPOLOGIES["h100-8x8-roce"]) === 48);
 * console.assert(nicGBsPerGpu({ ...TOPOLOGIES["h100-8x8-roce"], nicsPerNode: 4 }) === 24);
 * ```
 */
export function nicGBsPerGpu(t: Topology): number {
  if (t.nicsPerNode <= 0) return 0;
  return t.nicGBs * Math.min(1, t.nicsPerNode / t.gpusPerNode);
}

/** Flag names {@link topologyFrom} accepts, each overriding one field. */
export const TOPOLOGY_FLAGS: Readonly<Record<string, keyof Topology>> = Object.freeze({
  "gpus-per-node": "gpusPerNode",
  nodes: "nodes",
  "nvlink-write-gbs": "nvlinkWriteGBs",
  "nvlink-read-gbs": "nvlinkReadGBs",
  nics: "nicsPerNode",
  "nic-gbs": "nicGBs",
  "hbm-gbs": "hbmGBs",
});

/**
 * A preset, with fields overridden by flags (numbers, by the names in
 * {@link TOPOLOGY_FLAGS}).
 *
 * @throws {WeftError} `--topology` for an unknown preset; the flag's name for a bad value.
 * @example
 * ```ts
 * import { topologyFrom } from "./topology.ts";
 * const t = topologyFrom("h100-8x8-roce", { nodes: "4", "nic-gbs": "25" });
 * console.assert(t.nodes === 4 && t.nicGBs === 25 && t.name === "h100-8x8-roce*");
 * ```
 */
export function topologyFrom(
  preset: string,
  flags: Readonly<Record<string, string | undefined>> = {},
): Topology {
  const base = TOPOLOGIES[preset];
  if (base === undefined) {
    throw new WeftError({
      field: "--topology",
      problem: `"${preset}" is not a preset`,
      fix: `choose from ${Object.keys(TOPOLOGIES).join(", ")}, then override fields with flags`,
    });
  }
  const out: Record<string, unknown> = { ...base };
  let changed = false;
  for (const [flag, field] of Object.entries(TOPOLOGY_FLAGS)) {
    const v = flags[flag];
    if (v === undefined) continue;
    const n = Number(v);
    const integer = field === "gpusPerNode" || field === "nodes" || field === "nicsPerNode";
    const min = field === "nicsPerNode" || field === "nicGBs" ? 0 : integer ? 1 : Number.MIN_VALUE;
    if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
      throw new WeftError({
        field: `--${flag}`,
        problem: `must be ${integer ? "an integer" : "a number"} ≥ ${min}, got "${v}"`,
        fix: `pass e.g. --${flag} ${base[field]}`,
      });
    }
    out[field] = n;
    changed = true;
  }
  if (changed) out.name = `${base.name}*`;
  const t = out as unknown as Topology;
  if (t.nodes > 1 && nicGBsPerGpu(t) <= 0) {
    throw new WeftError({
      field: "--nics",
      problem: `${t.nodes} nodes need NICs, the topology has ${t.nicsPerNode} at ${t.nicGBs} GB/s`,
      fix: "pass --nics N and --nic-gbs G",
    });
  }
  return t;
}
