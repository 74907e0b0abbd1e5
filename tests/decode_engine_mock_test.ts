/**
 * The decode engine's TypeScript side without a GPU, against
 * tests/fixtures/mock_weft.c (world 1, executed on the host): footprint,
 * staging, capture and replay against the decode Simulator, the error
 * report of check(), argument checks, and use after close. The full
 * replay cases (tests/gpu/cases_decode.ts) run against the mock in
 * tests/engine_mock_test.ts.
 */
import assert from "node:assert/strict";
import { WeftError } from "../dsl/errors.ts";
import { experts } from "../dsl/mod.ts";
import { Communicator } from "../lib/dist/communicator.ts";
import { StoreServer } from "../lib/dist/store.ts";
import { DecodeEngine } from "../lib/gpu/decode.ts";
import { DeviceTensor } from "../lib/gpu/device_tensor.ts";
import { DecodeSimulator } from "../lib/sim/decode.ts";
import { soloRank, withCc } from "./fixtures/mock_lib.ts";

const field = (f: string) => (e: unknown) => e instanceof WeftError && e.field === f;

Deno.test({
  name: "decode engine: capture once, replay with new steps, equal to the decode Simulator",
  ...withCc,
  async fn() {
    await using server = StoreServer.listen();
    await using comm = await Communicator.create(soloRank(server.address));
    const plan = experts(8).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 1 });
    const options = { capacity: 4, expertCapacity: 3 };
    const fp = DecodeEngine.footprint(plan, options);
    assert(
      fp.heapBytes > 4096 && fp.deviceBytes > 0 && fp.totalBytes === fp.heapBytes + fp.deviceBytes,
    );
    using dec = await DecodeEngine.create(plan, comm, options);
    assert.deepEqual(dec.footprint, fp);
    assert.equal(dec.expertCapacity, 3);
    assert.equal(dec.recv.rows, 8 * 3);
    using sim = new DecodeSimulator(plan, { maxTokens: 4, expertCapacity: 3 });
    const graph = dec.capture();
    for (let s = 0; s < 6; s++) {
      const T = s % 5;
      const topkIdx = Int32Array.from({ length: T * 2 }, (_, i) => (i * 3 + s) % 8);
      const topkWeights = Float32Array.from({ length: T * 2 }, (_, i) => 0.5 + i / 8);
      const x = Float32Array.from({ length: T * 8 }, (_, i) => 1 + i + s);
      dec.out.poison();
      dec.stage({ x, topkIdx, topkWeights });
      dec.replay(graph);
      await dec.check();
      const want = await sim.dispatch([{ x, topkIdx, topkWeights }]);
      assert.deepEqual(await dec.expertCounts.read(), want.results[0].expertCounts, `step ${s}`);
      assert.deepEqual(await dec.srcToken.read(), want.results[0].srcToken, `step ${s}`);
      const [out] = await sim.combine(want, [want.results[0].recv.data as Float32Array]);
      assert.deepEqual((await dec.out.read()).subarray(0, T * 8), out.data, `step ${s}`);
    }
    // Expert 0 four times: over C = 3, reported by check(), then a good step works.
    dec.stage({
      x: new Float32Array(32).fill(1),
      topkIdx: Int32Array.from([0, 1, 0, 2, 0, 3, 0, 4]),
      topkWeights: new Float32Array(8).fill(1),
    });
    dec.replay();
    await assert.rejects(dec.check(), field("expertCapacity"));
    await dec.check();
    dec.stage({
      x: new Float32Array(8),
      topkIdx: Int32Array.from([9, 1]),
      topkWeights: new Float32Array(2),
    });
    dec.replay();
    // Reading an output of a failed step is a host touch: it reports the error.
    await assert.rejects(dec.out.read(), field("topkIdx"));
    await dec.check();
    // Argument checks.
    assert.throws(
      () =>
        dec.stage({
          x: new Float32Array(8),
          topkIdx: new Int32Array(3),
          topkWeights: new Float32Array(3),
        }),
      field("step"),
    );
    assert.throws(
      () =>
        dec.stage({
          x: new Float32Array(80),
          topkIdx: new Int32Array(20),
          topkWeights: new Float32Array(20),
        }),
      field("step"),
    );
    using small = DeviceTensor.alloc(0, "f32", 2, 8);
    assert.throws(() => dec.combine(small), field("y"));
    assert.throws(() => dec.replay(5), (e: unknown) => e instanceof WeftError);
    await assert.rejects(
      DecodeEngine.create(plan, comm, { capacity: 4, combineWire: "bf16" as "f32" }),
      field("combineWire"),
    );
    await assert.rejects(DecodeEngine.create(plan, comm, { capacity: 0 }), field("capacity"));
    await assert.rejects(
      DecodeEngine.create(plan, comm, { capacity: 4, expertCapacity: -2 }),
      field("expertCapacity"),
    );
    await assert.rejects(DecodeEngine.create(plan, comm, { capacity: 1 << 16 }), field("mode"));
    dec.close();
    assert.throws(() => dec.dispatch(), field("decode engine"));
    assert.throws(() => dec.recv.pointer, field("tensor"));
  },
});
