import { strict as assert } from "node:assert";
import fc from "fast-check";
import { Simulator } from "../lib/sim/simulator.ts";
import { arbBatch, makeInputs } from "./fixtures.ts";

Deno.test("simulator: layout then redispatch gives exactly what dispatch gives", async () => {
  await fc.assert(
    fc.asyncProperty(arbBatch, async ({ plan, tokens, seed, empty }) => {
      const inputs = makeInputs(plan, tokens, seed, empty);
      using sim = new Simulator(plan);
      const direct = await sim.dispatch(inputs);
      using planned = await sim.layout(
        inputs.map((i) => ({ topkIdx: i.topkIdx, topkWeights: i.topkWeights })),
      );
      const split = await sim.redispatch(planned, inputs.map((i) => i.x));
      for (let r = 0; r < plan.world; r++) {
        const a = direct.results[r], b = split.results[r];
        assert.deepEqual(await b.recv.read(), await a.recv.read());
        assert.deepEqual(b.expertCounts, a.expertCounts);
        assert.deepEqual(b.recvWeights, a.recvWeights);
        assert.deepEqual(b.srcRank, a.srcRank);
        assert.deepEqual(b.srcToken, a.srcToken);
        assert.deepEqual(b.srcK, a.srcK);
      }
      direct.handle.close();
    }),
    { numRuns: 25 },
  );
});

Deno.test("simulator: layout rejects bad routing before computing anything", async () => {
  await fc.assert(
    fc.asyncProperty(arbBatch, async ({ plan, tokens, seed, empty }) => {
      const inputs = makeInputs(plan, tokens, seed, empty);
      fc.pre(inputs[0].topkIdx.length > 0);
      using sim = new Simulator(plan);
      const bad = inputs.map((i) => ({ topkIdx: i.topkIdx.slice(), topkWeights: i.topkWeights }));
      bad[0].topkIdx[0] = plan.experts;
      await assert.rejects(
        sim.layout(bad),
        (e: Error) => e.name === "WeftError" && e.message.includes("topkIdx"),
      );
      assert.equal(sim.lastLayout, undefined);
    }),
    { numRuns: 10 },
  );
});
