/**
 * Placement: which rank holds which expert, compiled to the flat slot tables
 * of {@link PlanSpec}, and the replica-choice rule that maps one (token,
 * expert) pair to one slot.
 *
 * A *slot* is one (rank, local expert) pair. Slots are numbered rank by rank
 * (`slotBase[rank] + local`), so the slots of one rank are contiguous and
 * ascending slot id means ascending (rank, local expert). The layout compiler
 * and the GPU layout kernels both rely on that numbering.
 *
 * @module
 */
import type { BasePlacement, PlanSpec, Replication } from "./types.ts";
import { WeftError } from "./errors.ts";
import { show } from "./show.ts";
import { checkAtMost, MAX_EXPERTS, MAX_WORLD } from "./limits.ts";

/** The flat tables {@link compilePlacement} produces; the placement half of a {@link PlanSpec}. */
export interface CompiledPlacement {
  /** [world] slots on each rank (base experts, then replicas). */
  localExperts: Int32Array;
  /** [world+1] prefix sum of localExperts. */
  slotBase: Int32Array;
  /** [slots] global expert held by each slot. */
  slotExpert: Int32Array;
  /** [experts+1] CSR offsets into replicaSlots. */
  replicaStart: Int32Array;
  /** Slots of each expert in ascending rank. */
  replicaSlots: Int32Array;
}

function isCount(n: unknown, min: number): n is number {
  return typeof n === "number" && Number.isInteger(n) && n >= min;
}

function fail(field: string, problem: string, fix: string): never {
  throw new WeftError({ field, problem, fix });
}

/** Base owner rank of every expert, validated. */
function baseOwners(placement: BasePlacement, experts: number, world: number): Int32Array {
  const owners = new Int32Array(experts);
  switch (placement.kind) {
    case "byDevice": {
      if (experts % world !== 0) {
        fail(
          "experts",
          `byDevice placement needs experts divisible by world, got ${experts} experts on ${world} ranks`,
          `use a multiple of ${world} experts, or placement roundRobin / table`,
        );
      }
      const per = experts / world;
      for (let e = 0; e < experts; e++) owners[e] = Math.floor(e / per);
      return owners;
    }
    case "roundRobin":
      for (let e = 0; e < experts; e++) owners[e] = e % world;
      return owners;
    case "table": {
      const table = placement.owners;
      if (!Array.isArray(table) || table.length !== experts) {
        fail(
          "placement.owners",
          `needs one owner rank per expert (${experts}), got ${
            Array.isArray(table) ? table.length : typeof table
          }`,
          `give an array of ${experts} ranks in [0, ${world})`,
        );
      }
      for (let e = 0; e < experts; e++) {
        const r = table[e];
        if (!Number.isInteger(r) || r < 0 || r >= world) {
          fail(
            `placement.owners[${e}]`,
            `owner rank must be an integer in [0, ${world}), got ${show(r)}`,
            `set an owner between 0 and ${world - 1}`,
          );
        }
        owners[e] = r;
      }
      return owners;
    }
    default:
      fail(
        "placement.kind",
        `unknown placement ${show((placement as { kind?: unknown }).kind)}`,
        `use "byDevice", "roundRobin" or "table"`,
      );
  }
}

/**
 * Compile a placement (plus optional replicas) into slot tables.
 *
 * Base experts of a rank take its first local indices in ascending global id;
 * replicas follow, also in ascending global id. Extra replicas of expert e
 * (base owner o, `c` copies) go to ranks `(o + i·⌈W/c⌉) mod W`, i = 1…c−1,
 * moving up one rank (mod W) past any rank that already holds e.
 *
 * @throws {WeftError} naming the field: `experts` (not divisible by world for
 *   byDevice, or not ≥ 1), `world`, `gpusPerNode`, `placement.owners[i]`,
 *   `replicas.copies`, `replicas.experts[i]`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { compilePlacement } from "./placement.ts";
 * const p = compilePlacement({ placement: { kind: "byDevice" }, experts: 8, world: 4, gpusPerNode: 4 });
 * assert.ok(p.slotBase[2] === 4 && p.slotExpert[5] === 5);
 * ```
 */
export function compilePlacement(args: {
  placement: BasePlacement;
  replicas?: Replication;
  experts: number;
  world: number;
  gpusPerNode: number;
}): CompiledPlacement {
  const { placement, replicas, experts, world, gpusPerNode } = args;
  if (!isCount(world, 1)) {
    fail("world", `must be an integer ≥ 1, got ${show(world)}`, "pass world ≥ 1");
  }
  if (!isCount(gpusPerNode, 1) || world % gpusPerNode !== 0) {
    fail(
      "gpusPerNode",
      `must be an integer ≥ 1 dividing world ${world}, got ${show(gpusPerNode)}`,
      `use a divisor of ${world}`,
    );
  }
  if (!isCount(experts, 1)) {
    fail("experts", `must be an integer ≥ 1, got ${show(experts)}`, "pass the global expert count");
  }
  checkAtMost("world", world, MAX_WORLD, `use at most ${MAX_WORLD} ranks (MAX_WORLD)`);
  checkAtMost("experts", experts, MAX_EXPERTS, `use at most ${MAX_EXPERTS} experts (MAX_EXPERTS)`);
  const owners = baseOwners(placement, experts, world);

  // holders[e] lists every rank holding e (base owner first, then replicas).
  const extra: number[][] = Array.from({ length: world }, () => []);
  const holders: number[][] = Array.from({ length: experts }, (_, e) => [owners[e]]);
  if (replicas !== undefined) {
    const { copies, experts: hot } = replicas;
    if (!isCount(copies, 2) || copies > world) {
      fail(
        "replicas.copies",
        `must be an integer in [2, world=${world}], got ${show(copies)}`,
        world < 2 ? "drop replicas: one rank cannot hold two copies" : `use 2…${world} copies`,
      );
    }
    if (!Array.isArray(hot)) {
      fail("replicas.experts", "must be an array of expert ids", "list the hot experts");
    }
    const seen = new Uint8Array(experts);
    const stride = Math.ceil(world / copies);
    for (let i = 0; i < hot.length; i++) {
      const e = hot[i];
      if (!Number.isInteger(e) || e < 0 || e >= experts) {
        fail(
          `replicas.experts[${i}]`,
          `expert id must be an integer in [0, ${experts}), got ${show(e)}`,
          `list experts between 0 and ${experts - 1}`,
        );
      }
      if (seen[e]) {
        fail(`replicas.experts[${i}]`, `expert ${e} is listed twice`, "list each hot expert once");
      }
      seen[e] = 1;
      const o = owners[e];
      for (let c = 1; c < copies; c++) {
        let r = (o + c * stride) % world;
        while (holders[e].includes(r)) r = (r + 1) % world;
        holders[e].push(r);
      }
    }
    // Replicas are appended in ascending global id, whatever order the list had.
    for (let e = 0; e < experts; e++) {
      for (let j = 1; j < holders[e].length; j++) extra[holders[e][j]].push(e);
    }
  }

  const localExperts = new Int32Array(world);
  for (let e = 0; e < experts; e++) localExperts[owners[e]]++;
  for (let r = 0; r < world; r++) localExperts[r] += extra[r].length;
  const slotBase = new Int32Array(world + 1);
  for (let r = 0; r < world; r++) slotBase[r + 1] = slotBase[r] + localExperts[r];
  const slots = slotBase[world];
  const slotExpert = new Int32Array(slots);
  const cursor = slotBase.slice(0, world);
  for (let e = 0; e < experts; e++) slotExpert[cursor[owners[e]]++] = e;
  for (let r = 0; r < world; r++) for (const e of extra[r]) slotExpert[cursor[r]++] = e;

  // Walking slots in ascending id visits ranks in ascending order, so each
  // expert's replica list comes out sorted by rank.
  const replicaStart = new Int32Array(experts + 1);
  for (let s = 0; s < slots; s++) replicaStart[slotExpert[s] + 1]++;
  for (let e = 0; e < experts; e++) replicaStart[e + 1] += replicaStart[e];
  const replicaSlots = new Int32Array(slots);
  const fill = replicaStart.slice(0, experts);
  for (let s = 0; s < slots; s++) replicaSlots[fill[slotExpert[s]]++] = s;
  return { localExperts, slotBase, slotExpert, replicaStart, replicaSlots };
}

/**
 * The rank that holds a slot (binary search over `slotBase`, skipping ranks
 * with no slots).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { compilePlacement, slotRank } from "./placement.ts";
 * const p = compilePlacement({ placement: { kind: "byDevice" }, experts: 8, world: 4, gpusPerNode: 2 });
 * assert.ok(slotRank(p, 5) === 2);
 * ```
 */
export function slotRank(plan: Pick<PlanSpec, "slotBase">, slot: number): number {
  const base = plan.slotBase;
  // Largest r with base[r] ≤ slot < base[r+1].
  let lo = 0;
  let hi = base.length - 2;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (base[mid] <= slot) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/**
 * [slots] owning rank of every slot, for loops that resolve many slots.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { compilePlacement, slotRankTable } from "./placement.ts";
 * const p = compilePlacement({ placement: { kind: "roundRobin" }, experts: 4, world: 2, gpusPerNode: 2 });
 * assert.ok(slotRankTable(p).join() === "0,0,1,1");
 * ```
 */
export function slotRankTable(plan: Pick<PlanSpec, "slotBase">): Int32Array {
  const base = plan.slotBase;
  const world = base.length - 1;
  const out = new Int32Array(base[world]);
  for (let r = 0; r < world; r++) out.fill(r, base[r], base[r + 1]);
  return out;
}

/**
 * The slot a (token, expert) pair uses: the replica-choice rule of
 * {@link Replication}. With replicas on ranks R = [r0 < r1 < …] of expert e,
 * for token t on source rank s:
 *   1. the replica on s, if there is one;
 *   2. else the replicas on s's node (rank order), indexed by t mod their count;
 *   3. else R[t mod |R|].
 * An expert without replicas always resolves to its one slot. Kept to integer
 * compares and one modulo so the GPU layout kernel implements it identically.
 * The expert id must be valid (0 ≤ expert < plan.experts).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { compilePlacement, resolveSlot } from "./placement.ts";
 * import type { PlanSpec } from "./types.ts";
 * const p = compilePlacement({ placement: { kind: "byDevice" }, replicas: { experts: [0], copies: 2 }, experts: 4, world: 2, gpusPerNode: 1 });
 * const plan = { ...p, gpusPerNode: 1 } as unknown as PlanSpec;
 * assert.ok(resolveSlot(plan, 0, 1, 7) === p.slotBase[1] + 2); // the replica on rank 1
 * ```
 */
export function resolveSlot(
  plan: Pick<PlanSpec, "gpusPerNode" | "slotBase" | "replicaStart" | "replicaSlots">,
  expert: number,
  srcRank: number,
  token: number,
): number {
  const start = plan.replicaStart[expert];
  const n = plan.replicaStart[expert + 1] - start;
  const slots = plan.replicaSlots;
  if (n === 1) return slots[start];
  const base = plan.slotBase;
  // Rule 1: a replica on the source rank.
  for (let i = 0; i < n; i++) {
    const s = slots[start + i];
    if (base[srcRank] <= s && s < base[srcRank + 1]) return s;
  }
  // Rule 2: replicas on the source's node occupy a contiguous slot range.
  const gpn = plan.gpusPerNode;
  const nodeFirst = srcRank - (srcRank % gpn);
  const lo = base[nodeFirst];
  const hi = base[nodeFirst + gpn];
  let first = -1;
  let count = 0;
  for (let i = 0; i < n; i++) {
    const s = slots[start + i];
    if (lo <= s && s < hi) {
      if (count === 0) first = i;
      count++;
    }
  }
  if (count > 0) return slots[start + first + (token % count)];
  // Rule 3.
  return slots[start + (token % n)];
}
