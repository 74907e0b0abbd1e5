/**
 * Decode mode's CPU oracle (lib/sim/decode.ts): its padded layout is the
 * normal Simulator's expert-major layout placed at padded offsets (a
 * property over random plans and routings), the overflow rule, combine
 * through the padding equals the normal combine, and argument checks.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { WeftError } from "../dsl/errors.ts";
import { experts } from "../dsl/mod.ts";
import type { PlanSpec } from "../dsl/types.ts";
import { Simulator } from "../lib/sim/simulator.ts";
import { decodeExpertCapacity, DecodeSimulator } from "../lib/sim/decode.ts";
import type { RankInput } from "../lib/core/engine_api.ts";
import { mulberry32 } from "../lib/io/routing.ts";

/** Random inputs (rows never zero) for every rank: T_r tokens, distinct experts per token, some -1. */
function randomInputs(plan: PlanSpec, tokens: readonly number[], seed: number): RankInput[] {
  const rnd = mulberry32(seed);
  const { topK: K, hidden: H, experts: E } = plan;
  return tokens.map((T) => {
    const topkIdx = new Int32Array(T * K).fill(-1);
    for (let t = 0; t < T; t++) {
      const pool = Array.from({ length: E }, (_, e) => e);
      for (let k = 0; k < K; k++) {
        if (rnd() < 0.15) continue;
        const j = Math.floor(rnd() * pool.length);
        topkIdx[t * K + k] = pool.splice(j, 1)[0];
      }
    }
    const topkWeights = Float32Array.from({ length: T * K }, () => 0.25 + rnd());
    const x = Float32Array.from({ length: T * H }, () => (rnd() < 0.5 ? -1 : 1) * (0.5 + rnd()));
    return { x, topkIdx, topkWeights };
  });
}

const planArb = fc.record({
  world: fc.integer({ min: 1, max: 4 }),
  perRank: fc.integer({ min: 1, max: 4 }),
  topK: fc.integer({ min: 1, max: 4 }),
  placement: fc.constantFrom("byDevice", "roundRobin"),
}).map(({ world, perRank, topK, placement }) => {
  const e = experts(world * perRank);
  const placed = placement === "byDevice" ? e.byDevice() : e.roundRobin();
  return placed.topK(Math.min(topK, world * perRank)).dtype("f32").hidden(8).compile({ world });
});

Deno.test("decode sim: the padded layout is the normal layout at padded offsets, padding marked", async () => {
  await fc.assert(
    fc.asyncProperty(
      planArb,
      fc.integer({ min: 1, max: 6 }),
      fc.integer({ min: 0, max: 1 << 30 }),
      fc.integer({ min: 0, max: 12 }),
      async (plan, maxTokens, seed, ecapIn) => {
        const rnd = mulberry32(seed ^ 0x5bd1);
        const tokens = Array.from(
          { length: plan.world },
          () => Math.floor(rnd() * (maxTokens + 1)),
        );
        const inputs = randomInputs(plan, tokens, seed);
        using sim = new Simulator(plan);
        using dec = new DecodeSimulator(plan, { maxTokens, expertCapacity: ecapIn });
        const C = dec.expertCapacity;
        const want = await sim.dispatch(inputs);
        const got = await dec.dispatch(inputs);
        const H = plan.hidden;
        for (const [r, w] of want.results.entries()) {
          const g = got.results[r];
          const L = w.expertCounts.length;
          assert.equal(g.recv.rows, L * C);
          let from = 0;
          for (let l = 0; l < L; l++) {
            const n = w.expertCounts[l];
            const kept = Math.min(n, C);
            assert.equal(g.expertCounts[l], kept);
            assert.equal(
              got.overflow.some((o) => o.rank === r && o.localExpert === l && o.rows === n),
              n > C,
            );
            for (let j = 0; j < C; j++) {
              const at = l * C + j;
              if (j < kept) {
                assert.deepEqual(
                  g.recv.data.subarray(at * H, (at + 1) * H),
                  w.recv.data.subarray((from + j) * H, (from + j + 1) * H),
                );
                assert.equal(g.recvWeights[at], w.recvWeights[from + j]);
                assert.equal(g.srcRank[at], w.srcRank[from + j]);
                assert.equal(g.srcToken[at], w.srcToken[from + j]);
                assert.equal(g.srcK[at], w.srcK[from + j]);
              } else {
                assert.equal(g.srcRank[at], -1);
                assert.equal(g.srcToken[at], -1);
                assert.equal(g.srcK[at], -1);
                assert.equal(g.recvWeights[at], 0);
                assert(g.recv.data.subarray(at * H, (at + 1) * H).every((v) => v === 0));
              }
            }
            from += n;
          }
        }
        if (got.overflow.length > 0) {
          await assert.rejects(
            dec.combine(got, got.results.map((g) => g.recv.data as Float32Array)),
            (e: unknown) => e instanceof WeftError && e.field === "expertCapacity",
          );
          return;
        }
        // Combine through the padding equals the normal combine, bit for bit.
        const outs = await dec.combine(got, got.results.map((g) => g.recv.data as Float32Array));
        const ref = await sim.combine(
          want.handle,
          want.results.map((w) => w.recv.data as Float32Array),
        );
        outs.forEach((o, r) => assert.deepEqual(o.data, ref[r].data));
      },
    ),
    { numRuns: 60 },
  );
});

Deno.test("decode sim: the default expert capacity never overflows; one row over it does", async () => {
  const plan = experts(4).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 2 });
  assert.equal(decodeExpertCapacity(plan, { maxTokens: 3 }), 6);
  assert.equal(decodeExpertCapacity(plan, { maxTokens: 3, expertCapacity: 99 }), 6);
  // Every token of both ranks picks expert 0 (rank 0's local expert 0): 2·3 rows.
  const all0 = (): RankInput => ({
    x: new Float32Array(3 * 8).fill(1),
    topkIdx: Int32Array.from([0, 1, 0, 2, 0, 3]),
    topkWeights: new Float32Array(6).fill(0.5),
  });
  using ok = new DecodeSimulator(plan, { maxTokens: 3 });
  assert.equal((await ok.dispatch([all0(), all0()])).overflow.length, 0);
  using tight = new DecodeSimulator(plan, { maxTokens: 3, expertCapacity: 5 });
  const step = await tight.dispatch([all0(), all0()]);
  assert.deepEqual(step.overflow, [{ rank: 0, localExpert: 0, rows: 6 }]);
  assert.equal(step.results[0].expertCounts[0], 5);
  // The dropped row is the last in (source rank, token) order: rank 1's token 2.
  assert.deepEqual([...step.results[0].srcRank.subarray(0, 5)], [0, 0, 0, 1, 1]);
  assert.deepEqual([...step.results[0].srcToken.subarray(0, 5)], [0, 1, 2, 0, 1]);
});

Deno.test("decode sim: bad capacity, expert capacity, receive order and token count are WeftErrors", async () => {
  const plan = experts(4).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 1 });
  const field = (f: string) => (e: unknown) => e instanceof WeftError && e.field === f;
  assert.throws(() => decodeExpertCapacity(plan, { maxTokens: 0 }), field("capacity"));
  assert.throws(() => decodeExpertCapacity(plan, { maxTokens: 2.5 }), field("capacity"));
  assert.throws(
    () => decodeExpertCapacity(plan, { maxTokens: 4, expertCapacity: -1 }),
    field("expertCapacity"),
  );
  const rankMajor = experts(4).byDevice().topK(2).dtype("f32").hidden(8).receive("rank-major")
    .compile({ world: 1 });
  assert.throws(() => new DecodeSimulator(rankMajor, { maxTokens: 4 }), field("mode"));
  using dec = new DecodeSimulator(plan, { maxTokens: 1 });
  await assert.rejects(
    dec.dispatch([{
      x: new Float32Array(16),
      topkIdx: new Int32Array([0, 1, 2, 3]),
      topkWeights: new Float32Array(4),
    }]),
    field("tokens"),
  );
});
