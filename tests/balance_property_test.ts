// The forwarder table moves bytes, never results: with `balance: "greedy"`
// the one-hop Simulator, the staged executor and the layout give the same
// dispatch and combine bits as with `rail`; only which ranks forward
// (their NIC inbound and fan-out) changes, and the cross-node total stays.
import assert from "node:assert/strict";
import fc from "fast-check";
import { Simulator } from "../lib/sim/simulator.ts";
import { hotMix, mulberry32, zipf } from "../lib/io/routing.ts";
import { computeLayout } from "../dsl/layout.ts";
import {
  crossNodeLoads,
  forwarderLoads,
  forwarderOf,
  greedyTable,
  railTable,
} from "../dsl/balance.ts";
import type { Balance, BatchLayout, DType, PlanSpec, ReceiveOrder } from "../dsl/types.ts";
import { type HostInput, makePlan, makeRouting, randomRows } from "./fixtures.ts";
import { wideYs } from "./sim_fixtures.ts";

/** The same plan with another forwarder table (pattern and plan agree). */
export const withBalance = (plan: PlanSpec, balance: Balance): PlanSpec => ({
  ...plan,
  balance,
  pattern: { ...plan.pattern, balance },
});

type RoutingKind = "random" | "zipf" | "hot";

/** Routing of one kind; `tokens` uneven, zeros included. */
function routingOf(
  plan: PlanSpec,
  kind: RoutingKind,
  tokens: number[],
  seed: number,
): Int32Array[] {
  if (kind === "random") return makeRouting(plan, tokens, seed, 0.15);
  if (kind === "zipf") return zipf(plan, { tokens, seed, s: 1.4 }).map((r) => r.topkIdx);
  return hotMix(plan, { tokens, seed, hot: 1, hotShare: 0.7 }).map((r) => r.topkIdx);
}

/** Multi-node dedupe-node batches: 2–4 nodes, 1–4 GPUs each, skewed routings. */
const arbBalanced = fc
  .record({
    nodes: fc.integer({ min: 2, max: 4 }),
    gpn: fc.integer({ min: 1, max: 4 }),
    perRank: fc.integer({ min: 1, max: 3 }),
    roundRobin: fc.boolean(),
    topK: fc.integer({ min: 1, max: 4 }),
    dtype: fc.constantFrom<DType>("f32", "bf16", "f16"),
    quantize: fc.boolean(),
    receive: fc.constantFrom<ReceiveOrder>("expert-major", "rank-major"),
    replicas: fc.boolean(),
    routing: fc.constantFrom<RoutingKind>("random", "zipf", "hot"),
    maxTokens: fc.integer({ min: 0, max: 20 }),
    seed: fc.integer({ min: 1, max: 2 ** 30 }),
    slice: fc.integer({ min: 1, max: 7 }),
  })
  .map((r) => {
    const world = r.nodes * r.gpn;
    const experts = world * r.perRank;
    const topK = Math.min(r.topK, experts);
    const rng = mulberry32(r.seed);
    const plan = makePlan({
      world,
      gpusPerNode: r.gpn,
      experts,
      topK,
      hidden: r.quantize ? 128 : 8,
      dtype: r.dtype,
      dedupe: "node",
      receive: r.receive,
      placement: { kind: r.roundRobin ? "roundRobin" : "byDevice" },
      ...(r.replicas && world > 1 ? { replicas: { experts: [0], copies: 2 } } : {}),
      ...(r.quantize ? { quantize: "e4m3" as const } : {}),
    });
    // Uneven tokens; every third rank (by the seed) sends nothing.
    const tokens = Array.from(
      { length: world },
      () => rng() < 0.3 ? 0 : Math.floor(rng() * (r.maxTokens + 1)),
    );
    const idx = routingOf(plan, r.routing, tokens, r.seed);
    const inputs: HostInput[] = idx.map((topkIdx, s) => ({
      x: randomRows(plan, tokens[s], r.seed * 31 + s + 1),
      topkIdx,
      topkWeights: Float32Array.from({ length: topkIdx.length }, () => 0.05 + 0.95 * rng()),
    }));
    return { plan, inputs, seed: r.seed, slice: r.slice };
  });

const sims = (plan: PlanSpec, slice: number, wire: "f32" | "dtype") => [
  new Simulator(plan),
  new Simulator(plan, { protocol: "staged", sliceRows: slice, combineWire: wire }),
];

Deno.test("property: rail and greedy give the same dispatch and combine bits, one-hop and staged", async () => {
  await fc.assert(
    fc.asyncProperty(arbBalanced, async ({ plan, inputs, seed, slice }) => {
      const wire = seed % 2 === 0 ? "f32" : "dtype";
      const engines = [
        ...sims(withBalance(plan, "rail"), slice, wire),
        ...sims(withBalance(plan, "greedy"), slice, wire),
      ];
      try {
        const d = await Promise.all(engines.map((e) => e.dispatch(inputs)));
        for (const other of d.slice(1)) {
          other.results.forEach((res, r) => {
            const want = d[0].results[r];
            assert.deepStrictEqual(res.recv.data, want.recv.data, `recv of rank ${r}`);
            assert.deepStrictEqual(res.recvScales?.data, want.recvScales?.data);
            assert.deepStrictEqual(res.recvWeights, want.recvWeights);
            assert.deepStrictEqual(res.srcRank, want.srcRank);
            assert.deepStrictEqual(res.srcToken, want.srcToken);
            assert.deepStrictEqual(res.srcK, want.srcK);
            assert.deepStrictEqual(res.expertCounts, want.expertCounts);
          });
        }
        const ys = wideYs(plan, d[0].results.map((r) => r.recv.rows), seed);
        const outs = await Promise.all(engines.map((e, i) => e.combine(d[i].handle, ys)));
        // One-hop: rail = greedy. Staged: rail = greedy always; = one-hop with an f32 wire.
        const same = wire === "f32" ? [[0, 1], [0, 2], [0, 3]] : [[0, 2], [1, 3]];
        for (const [a, b] of same) {
          outs[b].forEach((o, r) => assert.deepStrictEqual(o.data, outs[a][r].data, `rank ${r}`));
        }
      } finally {
        engines.forEach((e) => e[Symbol.dispose]());
      }
    }),
    { numRuns: 60 },
  );
});

/** Σ over ranks of what they send to ranks of other nodes. */
const crossRows = (l: BatchLayout): number => {
  const gpn = l.plan.gpusPerNode;
  let n = 0;
  for (const link of l.links) if (((link.src / gpn) | 0) !== ((link.dst / gpn) | 0)) n += link.rows;
  return n;
};

Deno.test("property: greedy moves only forwarders: per-rank NIC inbound follows the table, totals stay", async () => {
  await fc.assert(
    fc.asyncProperty(arbBalanced, async ({ plan, inputs, slice }) => {
      const { world: W, gpusPerNode: gpn, topK: K, nodes: N } = plan;
      const idx = inputs.map((i) => i.topkIdx);
      const rail = computeLayout(withBalance(plan, "rail"), idx);
      const greedy = computeLayout(withBalance(plan, "greedy"), idx);
      const tables = {
        rail: railTable(W, gpn),
        greedy: greedyTable(crossNodeLoads(rail.ranks.map((r) => r.destRank), K, gpn), gpn),
      };
      // Rows per (source, node): the same under both tables.
      const nodeRows = new Float64Array(W * N);
      for (const r of rail.ranks) {
        for (let m = 0; m < N; m++) {
          if (m === ((r.rank / gpn) | 0)) continue;
          const f = forwarderOf(tables.rail, r.rank, m);
          nodeRows[r.rank * N + m] = r.sendOffsets[f + 1] - r.sendOffsets[f];
        }
      }
      assert.equal(crossRows(greedy), crossRows(rail));
      for (const [name, l] of [["rail", rail], ["greedy", greedy]] as const) {
        const t = tables[name];
        const want = forwarderLoads(nodeRows, t);
        using st = new Simulator(withBalance(plan, name), { protocol: "staged", sliceRows: slice });
        const d = await st.dispatch(inputs);
        for (let f = 0; f < W; f++) {
          // The layout: forwardRank and the staged rows per forwarder follow the table.
          for (let s = 0; s < W; s++) {
            const m = (f / gpn) | 0;
            if (m !== ((s / gpn) | 0)) {
              assert.equal(l.ranks[s].forwardRank[f], forwarderOf(t, s, m), `${name} ${s}→${f}`);
            }
          }
          const staged = l.ranks[f].forwardOffsets[W];
          assert.equal(staged, want[f], `${name}: rows staged at forwarder ${f}`);
          // The stage executor's NIC inbound is the same rows.
          const nic = d.traffic!.links.filter((x) => x.stage === "nic" && x.dst === f)
            .reduce((a, x) => a + x.rows, 0);
          assert.equal(nic, want[f], `${name}: NIC rows into ${f}`);
        }
      }
      // No (source, node) with rows changed forwarder: then no forwarder's load moved.
      const moved = Array.from({ length: W * N }, (_, i) => i).some((i) =>
        nodeRows[i] > 0 &&
        forwarderOf(tables.greedy, (i / N) | 0, i % N) !==
          forwarderOf(tables.rail, (i / N) | 0, i % N)
      );
      const inbound = (l: BatchLayout) => l.ranks.map((r) => r.forwardOffsets[W]).join();
      if (!moved) assert.equal(inbound(greedy), inbound(rail));
    }),
    { numRuns: 60 },
  );
});

Deno.test("greedy moves a hot sender's rows to another forwarder (2 nodes × 2 GPUs)", async () => {
  // Ranks 0 and 2 send 6 tokens each to the other node, ranks 1 and 3 one each:
  // loads [6, 1, 6, 1]. Rail pairs 0↔2 (both heavy) as each other's forwarders;
  // greedy: node 0 keeps [0, 1], node 1 sorts [2, 3] and rotates to [3, 2], so
  // 0 → 3 and 2 → 1: each heavy sender's rows land on a light rank.
  const plan = makePlan({ world: 4, gpusPerNode: 2, experts: 8, topK: 2, dedupe: "node" });
  const tokens = [6, 1, 6, 1];
  const remote = (s: number) => (s < 2 ? [4, 6] : [0, 2]); // experts on ranks 2,3 or 0,1
  const idx = tokens.map((T, s) => Int32Array.from({ length: 2 * T }, (_, i) => remote(s)[i % 2]));
  const inputs = idx.map((topkIdx, s) => ({
    x: randomRows(plan, tokens[s], s + 1),
    topkIdx,
    topkWeights: new Float32Array(topkIdx.length).fill(0.5),
  }));
  const nicIn = async (balance: Balance) => {
    using st = new Simulator(withBalance(plan, balance), { protocol: "staged", sliceRows: 4 });
    const d = await st.dispatch(inputs);
    // A NIC row: the f32 payload and its meta {t, K × (slot, ord, w)}.
    return d.traffic!.ranks.map((r) => r.nicRecv / (plan.hidden * 4 + 4 * (1 + 3 * plan.topK)));
  };
  assert.deepEqual(await nicIn("rail"), [6, 1, 6, 1]);
  assert.deepEqual(await nicIn("greedy"), [1, 6, 1, 6]);
  const out = computeLayout(withBalance(plan, "greedy"), idx);
  assert.deepEqual(Array.from(out.ranks[0].forwardRank), [0, 1, 3, 3]);
  assert.deepEqual(Array.from(out.ranks[2].forwardRank), [1, 1, 2, 3]);
});
