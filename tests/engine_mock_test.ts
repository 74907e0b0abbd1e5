/**
 * The GPU engine's TypeScript side without a GPU: DeviceTensor, the
 * Communicator and the Engine against tests/fixtures/mock_weft.c (a
 * host-memory stand-in for libweft.so built here with cc), compared with the
 * Simulator, up to the GPU test worker running all its world-1 cases
 * through the launcher.
 */
import assert from "node:assert/strict";
import { WeftError } from "../dsl/errors.ts";
import { DeviceTensor } from "../lib/gpu/device_tensor.ts";
import { Communicator } from "../lib/dist/communicator.ts";
import { Engine } from "../lib/gpu/engine.ts";
import { StoreServer } from "../lib/dist/store.ts";
import { experts } from "../dsl/mod.ts";
import { Simulator } from "../lib/sim/simulator.ts";
import { HostTensor } from "../lib/core/host_tensor.ts";
import type { RankInput, Tensor } from "../lib/core/engine_api.ts";
import { fromF32 } from "../lib/core/dtype.ts";
import { requireNccl } from "../lib/native/device.ts";
import { gpuCases } from "./gpu/cases.ts";
import { precisionCases } from "./gpu/cases_precision.ts";
import { decodeCases } from "./gpu/cases_decode.ts";
import { here, mock, soloRank, withCc, withEnv } from "./fixtures/mock_lib.ts";

Deno.test({
  name: "device tensor: upload, read, poison and close; a view dies with its owner",
  ...withCc,
  async fn() {
    using t = DeviceTensor.upload(0, "f32", 2, 3, Float32Array.of(1, 2, 3, 4, 5, 6));
    assert.equal(t.device, "cuda:0");
    assert.deepEqual([...(await t.read())], [1, 2, 3, 4, 5, 6]);
    t.poison(0xff);
    assert((await t.read()).every(Number.isNaN));
    using h = DeviceTensor.upload(0, "bf16", 1, 2, Uint16Array.of(0x3f80, 0x4000));
    assert.deepEqual([...(await h.read())], [0x3f80, 0x4000]);
    assert.throws(() => h.write(new Float32Array(2)), WeftError);
    const owner = { closed: false, description: "dispatch handle" };
    const view = DeviceTensor.view(0, "f32", 1, 3, t.pointer, owner);
    assert.equal((await view.read()).length, 3);
    owner.closed = true;
    await assert.rejects(
      view.read(),
      (e: unknown) => e instanceof WeftError && /dispatch handle that was closed/.test(e.message),
    );
    const empty = DeviceTensor.alloc(0, "f16", 0, 8);
    assert.equal((await empty.read()).length, 0);
    // i32 (routing ids): an Int32Array in and out, nothing else.
    using ids = DeviceTensor.upload(0, "i32", 2, 2, Int32Array.of(7, -1, 0, 2 ** 31 - 1));
    assert.equal(ids.byteLength, 16);
    const back: Int32Array = await ids.read();
    assert.ok(back instanceof Int32Array);
    assert.deepEqual([...back], [7, -1, 0, 2 ** 31 - 1]);
    assert.throws(
      () => ids.write(new Float32Array(4)),
      (e: unknown) => e instanceof WeftError && /Int32Array/.test(e.message),
    );
    empty.close();
    t.close();
    await assert.rejects(t.read(), WeftError);
  },
});

Deno.test({
  name:
    "communicator: NCCL id and IPC handles travel through the store; missing NCCL is a clear error",
  ...withCc,
  async fn() {
    await using server = StoreServer.listen();
    await assert.rejects(
      Communicator.create({ rank: 0, world: 1, localRank: 0, store: server.address, nccl: true }),
      (e: unknown) => e instanceof WeftError && e.field === "nccl",
    );
    assert.throws(requireNccl, WeftError);
    await withEnv({ MOCK_NCCL: "1" }, async () => {
      await using comm = await Communicator.create({
        rank: 0,
        world: 1,
        localRank: 0,
        store: server.address,
        nccl: true,
      });
      assert.equal(comm.nccl, true);
      await comm.barrier();
      await comm.hostBarrier();
    });
    await assert.rejects(
      Communicator.create({ rank: 0, world: 1, localRank: 1, store: server.address }),
      (e: unknown) => e instanceof WeftError && e.field === "localRank",
    );
  },
});

Deno.test({
  name: "engine: world-1 dispatch and combine agree with the Simulator; errors leave it usable",
  ...withCc,
  async fn() {
    await using server = StoreServer.listen();
    const plan = experts(16).roundRobin().topK(4).dtype("bf16").hidden(16).receive("rank-major")
      .compile({ world: 1 });
    await using comm = await Communicator.create(soloRank(server.address));
    assert.throws(
      () => Engine.create(plan, comm, { maxTokens: 1 << 20 }),
      (e: unknown) => e instanceof WeftError && e.field === "heapBytes",
    );
    using engine = await Engine.create(plan, comm, { maxTokens: 8 });
    assert.equal(engine.kind, "gpu");
    assert.deepEqual(engine.ranks, [0]);
    const T = 5;
    const x = fromF32(Float32Array.from({ length: T * 16 }, (_, i) => 1 + i / 8), "bf16");
    const topkIdx = Int32Array.from({ length: T * 4 }, (_, i) => (i % 4 === 3 ? -1 : (i * 5) % 16));
    const topkWeights = Float32Array.from({ length: T * 4 }, (_, i) => 0.1 + i / 40);
    using sim = new Simulator(plan);
    const want = await sim.dispatch([{ x, topkIdx, topkWeights }]);
    const got = await engine.dispatch([{ x, topkIdx, topkWeights }]);
    const [g, w] = [got.results[0], want.results[0]];
    assert.deepEqual(await g.recv.read(), await w.recv.read());
    for (const f of ["expertCounts", "recvWeights", "srcRank", "srcToken", "srcK"] as const) {
      assert.deepEqual(g[f], w[f], f);
    }

    // Re-dispatch: new rows through the same layout land in the same buffer.
    const x2 = fromF32(Float32Array.from({ length: T * 16 }, (_, i) => -i / 4), "bf16");
    await engine.redispatch(got.handle, [x2]);
    const want2 = await sim.redispatch(want.handle, [x2]);
    assert.deepEqual(await g.recv.read(), await want2.results[0].recv.read());
    await assert.rejects(
      engine.redispatch(got.handle, [new Uint16Array(3)]),
      (e: unknown) => e instanceof WeftError && e.field === "xs",
    );
    await engine.redispatch(got.handle, [x]);

    const y = await w.recv.read();
    const [out] = await engine.combine(got.handle, [y]);
    const [wantOut] = await sim.combine(want.handle, [y]);
    assert.deepEqual(await out.read(), await wantOut.read());
    out.close();

    // Two calls at once: the second is refused, the first completes.
    const first = engine.dispatch([{ x, topkIdx, topkWeights }]);
    await assert.rejects(engine.dispatch([{ x, topkIdx, topkWeights }]), /still running/);
    (await first).handle.close();

    const bad = topkIdx.slice();
    bad[2] = 16;
    await assert.rejects(
      engine.dispatch([{ x, topkIdx: bad, topkWeights }]),
      (e: unknown) => e instanceof WeftError && e.field === "topkIdx" && e.rank === 0,
    );
    const tooMany = {
      x: new Uint16Array(9 * 16).fill(0x3f80),
      topkIdx: new Int32Array(9 * 4).fill(-1),
      topkWeights: new Float32Array(9 * 4),
    };
    await assert.rejects(
      engine.dispatch([tooMany]),
      (e: unknown) => e instanceof WeftError && e.field === "tokens",
    );
    await assert.rejects(
      engine.combine(got.handle, [new Uint16Array(3)]),
      (e: unknown) => e instanceof WeftError && e.field === "ys",
    );

    const again = await engine.dispatch([{ x, topkIdx, topkWeights }]);
    assert.deepEqual(await again.results[0].recv.read(), await w.recv.read());
    const recv = again.results[0].recv;
    again.handle.close();
    await assert.rejects(recv.read(), /closed/);
    await assert.rejects(
      engine.combine(again.handle, [y]),
      (e: unknown) => e instanceof WeftError && e.field === "handle",
    );
    got.handle.close();
    want.handle.close();

    // Inputs in place: x in the heap's rows, the routing in the page-locked staging.
    const rowsIn = engine.inputRows(T);
    assert.deepEqual([rowsIn.rows, rowsIn.cols, rowsIn.owning], [T, 16, false]);
    rowsIn.write(x);
    const routingIn = engine.inputRouting(T);
    assert.equal(routingIn.topkIdx.length, T * 4);
    routingIn.topkIdx.set(topkIdx);
    routingIn.topkWeights.set(topkWeights);
    const inPlace = await engine.dispatch([{ x: rowsIn, ...routingIn }]);
    assert.deepEqual(await inPlace.results[0].recv.read(), await w.recv.read());
    assert.deepEqual(inPlace.results[0].srcK, w.srcK);
    inPlace.handle.close();
    for (const bad of [-1, 9, 1.5]) {
      assert.throws(
        () => engine.inputRows(bad),
        (e: unknown) => e instanceof WeftError && e.field === "tokens",
      );
      assert.throws(
        () => engine.inputRouting(bad),
        (e: unknown) => e instanceof WeftError && e.field === "tokens",
      );
    }
    // This plan sends rows in their dtype: no quantized staging to hand out.
    assert.throws(
      () => engine.inputQuantizedRows(),
      (e: unknown) => e instanceof WeftError && e.field === "plan.quantize",
    );
    await engine.synchronize();
    engine.close();
    await assert.rejects(rowsIn.read(), /view into a weft engine that was closed/);
  },
});

Deno.test({
  name: "engine: routing from device tensors is read where it is, any other tensor via the host",
  ...withCc,
  async fn() {
    await using server = StoreServer.listen();
    const plan = experts(16).byDevice().topK(4).dtype("bf16").hidden(16).compile({ world: 1 });
    await using comm = await Communicator.create(soloRank(server.address));
    using engine = await Engine.create(plan, comm, { maxTokens: 8 });
    using sim = new Simulator(plan);
    const T = 6;
    const K = plan.topK;
    const x = fromF32(Float32Array.from({ length: T * 16 }, (_, i) => 1 + i / 16), "bf16");
    const topkIdx = Int32Array.from({ length: T * K }, (_, i) => (i % 4 === 2 ? -1 : (i * 3) % 16));
    const topkWeights = Float32Array.from({ length: T * K }, (_, i) => 0.05 + i / 50);
    const want = await sim.dispatch([{ x, topkIdx, topkWeights }]);
    const same = async (got: Awaited<ReturnType<Engine["dispatch"]>>, what: string) => {
      const [g, w] = [got.results[0], want.results[0]];
      assert.deepEqual(await g.recv.read(), await w.recv.read(), what);
      for (const f of ["expertCounts", "recvWeights", "srcRank", "srcToken", "srcK"] as const) {
        assert.deepEqual(g[f], w[f], `${what}: ${f}`);
      }
      got.handle.close();
    };

    // On this GPU: passed as device pointers, never read back to the host.
    using idxDevice = DeviceTensor.upload(engine.device, "i32", T, K, topkIdx);
    using weightsDevice = DeviceTensor.upload(engine.device, "f32", T, K, topkWeights);
    const noRead = () => Promise.reject(new Error("a device tensor of this GPU was read"));
    Object.assign(idxDevice, { read: noRead });
    Object.assign(weightsDevice, { read: noRead });
    const onDevice = { topkIdx: idxDevice, topkWeights: weightsDevice };
    await same(await engine.dispatch([{ x, ...onDevice }]), "device routing");
    // Mixed: ids on the device, weights on the host (and the other way).
    await same(await engine.dispatch([{ x, topkIdx: idxDevice, topkWeights }]), "mixed");
    await same(await engine.dispatch([{ x, topkIdx, topkWeights: weightsDevice }]), "mixed");
    // The layout step alone takes them too; layout + redispatch = dispatch.
    const planned = await engine.layout([onDevice]);
    await same(await engine.redispatch(planned, [x]), "layout from device routing");

    // A tensor on another GPU, or a host tensor: read to the host, then staged.
    {
      using idxOther = DeviceTensor.upload(engine.device + 1, "i32", T, K, topkIdx);
      let reads = 0;
      const read = idxOther.read.bind(idxOther);
      Object.assign(idxOther, { read: () => (reads++, read()) });
      const hostWeights = new HostTensor("f32", T, K, topkWeights);
      await same(
        await engine.dispatch([{ x, topkIdx: idxOther, topkWeights: hostWeights }]),
        "other GPU / host tensor",
      );
      assert.equal(reads, 1);
    }

    // Shape errors name the field; the engine stays usable after each.
    const bad = async (input: RankInput, field: string, message: RegExp) => {
      const e = await engine.dispatch([input]).then((d) => {
        d.handle.close();
        return undefined;
      }, (e: unknown) => e);
      assert.ok(e instanceof WeftError, `expected a WeftError on ${field}, got ${e}`);
      assert.equal(e.field, field, e.message);
      assert.equal(e.rank, 0);
      assert.match(e.problem, message);
      (await engine.dispatch([{ x, topkIdx, topkWeights }])).handle.close();
    };
    using f32Idx = DeviceTensor.upload(engine.device, "f32", T, K, topkWeights);
    await bad({ x, topkIdx: f32Idx as unknown as Tensor<"i32">, topkWeights }, "topkIdx", /f32/);
    using wide = DeviceTensor.alloc(engine.device, "i32", T, K + 1);
    await bad({ x, topkIdx: wide, topkWeights }, "topkIdx", /columns/);
    using short = DeviceTensor.alloc(engine.device, "f32", T - 1, K);
    await bad({ x, topkIdx, topkWeights: short }, "topkWeights", /rows/);
    await bad({ x: idxDevice as unknown as Tensor, topkIdx, topkWeights }, "x", /i32 tensor/);
    await bad(
      { x: new Int32Array(T * 16) as never, topkIdx, topkWeights },
      "x",
      /is an Int32Array/,
    );
    // A tensor whose host copy disagrees with the shape it advertised.
    const liar: Tensor<"i32"> = {
      dtype: "i32",
      rows: T,
      cols: K,
      device: "host",
      read: () => Promise.resolve(topkIdx.subarray(K)),
    };
    await bad({ x, topkIdx: liar, topkWeights }, "topkIdx", /values, expected 6 tokens/);
    // An out-of-range id inside the device tensor: the device-side check catches it.
    const wrong = topkIdx.slice();
    wrong[5] = 16;
    using wrongDevice = DeviceTensor.upload(engine.device, "i32", T, K, wrong);
    await bad({ x, topkIdx: wrongDevice, topkWeights: weightsDevice }, "topkIdx", /topk_idx/);
    await assert.rejects(
      engine.layout([{ topkIdx: wrongDevice, topkWeights: weightsDevice }]),
      (e: unknown) => e instanceof WeftError && e.field === "topkIdx",
    );

    // No tokens: empty device tensors (NULL pointers) are fine.
    using noIdx = DeviceTensor.alloc(engine.device, "i32", 0, K);
    using noWeights = DeviceTensor.alloc(engine.device, "f32", 0, K);
    const none = await engine.dispatch([
      { x: new Uint16Array(0), topkIdx: noIdx, topkWeights: noWeights },
    ]);
    assert.equal(none.results[0].recv.rows, 0);
    none.handle.close();
    want.handle.close();
  },
});

async function runGpuTests(env: Record<string, string>): Promise<{ code: number; stdout: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", here("./gpu/run.ts"), "--worlds", "1"],
    env: { WEFT_LIB: mock, ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
}

Deno.test({
  name: "gpu tests: every world-1 case passes against the mock library through the launcher",
  ...withCc,
  async fn() {
    const { code, stdout } = await runGpuTests({});
    assert.equal(code, 0, stdout);
    // Every case of the suite runs at world 1 (the dead-peer case needs two ranks).
    assert.match(
      stdout,
      new RegExp(
        `^${
          gpuCases(1, 1).length + precisionCases(1, 1).length + decodeCases(1).length
        } passed, 0 failed$`,
        "m",
      ),
    );
  },
});

Deno.test({
  name: "gpu tests: a wrong received row and an unwritten output element are caught",
  ...withCc,
  async fn() {
    const recv = await runGpuTests({ MOCK_BREAK: "recv" });
    assert.equal(recv.code, 1);
    assert.match(recv.stdout, /FAIL world=1 deepseek-bf16-h7168-uneven-tokens .*recv differs/);
    const combine = await runGpuTests({ MOCK_BREAK: "combine" });
    assert.equal(combine.code, 1);
    assert.match(combine.stdout, /FAIL world=1 deepseek-bf16-h7168-uneven-tokens .*combine beyond/);
  },
});

Deno.test("gpu tests: without a GPU or a library, test:gpu prints SKIPPED and exits 0", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", here("./gpu/run.ts")],
    env: { WEFT_LIB: "/nonexistent/libweft.so" },
    stdout: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  // A GPU machine: run.ts fails there instead, by design.
  if (await Deno.stat("/dev/nvidia0").then(() => true, () => false)) return;
  assert.equal(out.code, 0);
  assert.match(text, /^SKIPPED: no GPU present \(.+\)$/m);
});
