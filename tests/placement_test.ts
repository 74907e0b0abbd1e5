import assert from "node:assert/strict";
import fc from "fast-check";
import { compilePlacement, resolveSlot, slotRank, slotRankTable } from "../dsl/placement.ts";
import { arbPlan, makePlan, weftError } from "./fixtures.ts";

const arr = (a: Int32Array): number[] => Array.from(a);

Deno.test("byDevice places contiguous blocks of E/W experts per rank", () => {
  const p = compilePlacement({
    placement: { kind: "byDevice" },
    experts: 8,
    world: 4,
    gpusPerNode: 2,
  });
  assert.deepStrictEqual(arr(p.localExperts), [2, 2, 2, 2]);
  assert.deepStrictEqual(arr(p.slotBase), [0, 2, 4, 6, 8]);
  assert.deepStrictEqual(arr(p.slotExpert), [0, 1, 2, 3, 4, 5, 6, 7]);
  assert.deepStrictEqual(arr(p.replicaStart), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepStrictEqual(arr(p.replicaSlots), [0, 1, 2, 3, 4, 5, 6, 7]);
});

Deno.test("roundRobin puts expert e on rank e mod W, local order by global id", () => {
  const p = compilePlacement({
    placement: { kind: "roundRobin" },
    experts: 5,
    world: 2,
    gpusPerNode: 1,
  });
  assert.deepStrictEqual(arr(p.localExperts), [3, 2]);
  assert.deepStrictEqual(arr(p.slotExpert), [0, 2, 4, 1, 3]);
  assert.deepStrictEqual(arr(p.replicaSlots), [0, 3, 1, 4, 2]);
});

Deno.test("table placement follows owners and allows empty ranks", () => {
  const p = compilePlacement({
    placement: { kind: "table", owners: [2, 0, 2, 2] },
    experts: 4,
    world: 3,
    gpusPerNode: 3,
  });
  assert.deepStrictEqual(arr(p.localExperts), [1, 0, 3]);
  assert.deepStrictEqual(arr(p.slotExpert), [1, 0, 2, 3]);
  assert.deepStrictEqual(slotRank(p, 0), 0);
  assert.deepStrictEqual(slotRank(p, 1), 2);
  assert.deepStrictEqual(arr(slotRankTable(p)), [0, 2, 2, 2]);
});

Deno.test("replicas go to owner + i·ceil(W/copies), appended in ascending expert id", () => {
  const p = compilePlacement({
    placement: { kind: "byDevice" },
    replicas: { experts: [5, 0], copies: 2 },
    experts: 8,
    world: 4,
    gpusPerNode: 2,
  });
  assert.deepStrictEqual(arr(p.localExperts), [3, 2, 3, 2]);
  assert.deepStrictEqual(arr(p.slotExpert), [0, 1, 5, 2, 3, 4, 5, 0, 6, 7]);
  assert.deepStrictEqual(arr(p.replicaSlots.subarray(p.replicaStart[0], p.replicaStart[1])), [
    0,
    7,
  ]);
  assert.deepStrictEqual(arr(p.replicaSlots.subarray(p.replicaStart[5], p.replicaStart[6])), [
    2,
    6,
  ]);
});

Deno.test("replicas skip ranks that already hold the expert (next rank up)", () => {
  // Expert 1 on rank 0, 3 copies on 4 ranks: stride 2 → ranks 2, then 4 mod 4 = 0 (held) → 1.
  const p = compilePlacement({
    placement: { kind: "byDevice" },
    replicas: { experts: [1], copies: 3 },
    experts: 8,
    world: 4,
    gpusPerNode: 4,
  });
  const ranks = arr(p.replicaSlots.subarray(p.replicaStart[1], p.replicaStart[2])).map((s) =>
    slotRank(p, s)
  );
  assert.deepStrictEqual(ranks, [0, 1, 2]);
});

Deno.test("placement errors name the field", () => {
  const cases: [Parameters<typeof compilePlacement>[0], string][] = [
    [{ placement: { kind: "byDevice" }, experts: 6, world: 4, gpusPerNode: 4 }, "experts"],
    [
      { placement: { kind: "table", owners: [0, 1] }, experts: 3, world: 2, gpusPerNode: 2 },
      "placement.owners",
    ],
    [
      { placement: { kind: "table", owners: [0, 2, 1] }, experts: 3, world: 2, gpusPerNode: 2 },
      "placement.owners[1]",
    ],
    [{
      placement: { kind: "byDevice" },
      replicas: { experts: [9], copies: 2 },
      experts: 4,
      world: 2,
      gpusPerNode: 2,
    }, "replicas.experts[0]"],
    [{
      placement: { kind: "byDevice" },
      replicas: { experts: [1, 1], copies: 2 },
      experts: 4,
      world: 2,
      gpusPerNode: 2,
    }, "replicas.experts[1]"],
    [{
      placement: { kind: "byDevice" },
      replicas: { experts: [1], copies: 1 },
      experts: 4,
      world: 2,
      gpusPerNode: 2,
    }, "replicas.copies"],
    [{
      placement: { kind: "byDevice" },
      replicas: { experts: [1], copies: 3 },
      experts: 4,
      world: 2,
      gpusPerNode: 2,
    }, "replicas.copies"],
    [{ placement: { kind: "byDevice" }, experts: 4, world: 4, gpusPerNode: 3 }, "gpusPerNode"],
    [{ placement: { kind: "byDevice" }, experts: 0, world: 1, gpusPerNode: 1 }, "experts"],
  ];
  for (const [args, field] of cases) {
    weftError(() => compilePlacement(args), field);
  }
});

Deno.test("resolveSlot: own rank first, then own node by token, then all replicas by token", () => {
  const replicas = { experts: [0], copies: 2 };
  // Expert 0 on ranks 0 and 2.
  const twoNodes = makePlan({ world: 4, gpusPerNode: 2, experts: 8, replicas });
  const [a, b] = [0, 6]; // its slots on rank 0 and rank 2 (after rank 2's experts 4, 5)
  assert.deepStrictEqual(resolveSlot(twoNodes, 0, 0, 5), a); // rule 1
  assert.deepStrictEqual(resolveSlot(twoNodes, 0, 2, 5), b); // rule 1
  assert.deepStrictEqual(resolveSlot(twoNodes, 0, 1, 5), a); // rule 2: node 0 holds one
  assert.deepStrictEqual(resolveSlot(twoNodes, 0, 3, 4), b); // rule 2: node 1 holds one
  const fourNodes = makePlan({ world: 4, gpusPerNode: 1, experts: 8, replicas });
  assert.deepStrictEqual(resolveSlot(fourNodes, 0, 1, 0), a); // rule 3: t mod 2 = 0
  assert.deepStrictEqual(resolveSlot(fourNodes, 0, 1, 1), b); // rule 3: t mod 2 = 1
  assert.deepStrictEqual(resolveSlot(fourNodes, 3, 1, 1), 3); // no replicas: the one slot
  // Rule 2 with several replicas on the node: indexed by t mod count, in rank order.
  const oneNode = makePlan({
    world: 4,
    gpusPerNode: 4,
    experts: 8,
    replicas: { experts: [1], copies: 3 },
  });
  const slots = Array.from(
    oneNode.replicaSlots.subarray(oneNode.replicaStart[1], oneNode.replicaStart[2]),
  );
  assert.deepStrictEqual([0, 1, 2, 3].map((t) => resolveSlot(oneNode, 1, 3, t)), [
    slots[0],
    slots[1],
    slots[2],
    slots[0],
  ]);
});

Deno.test("property: resolveSlot returns a slot of the expert, on the source rank or node when one exists", () => {
  fc.assert(
    fc.property(arbPlan, fc.nat(), fc.nat(1000), (plan, seed, t) => {
      const src = seed % plan.world;
      const e = (seed >> 3) % plan.experts;
      const slot = resolveSlot(plan, e, src, t);
      assert.deepStrictEqual(plan.slotExpert[slot], e);
      const holders = Array.from(
        plan.replicaSlots.subarray(plan.replicaStart[e], plan.replicaStart[e + 1]),
      )
        .map((s) => slotRank(plan, s));
      const node = (r: number) => Math.floor(r / plan.gpusPerNode);
      if (holders.includes(src)) assert.deepStrictEqual(slotRank(plan, slot), src);
      else if (holders.some((r) => node(r) === node(src))) {
        assert.deepStrictEqual(node(slotRank(plan, slot)), node(src));
      }
      // Local slots of each rank: base experts ascending, then replicas ascending.
      for (let r = 0; r < plan.world; r++) {
        const held = Array.from(plan.slotExpert.subarray(plan.slotBase[r], plan.slotBase[r + 1]));
        assert.ok(new Set(held).size === held.length, "a rank holds an expert twice");
      }
    }),
    { numRuns: 60 },
  );
});
