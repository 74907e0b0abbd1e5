import assert from "node:assert/strict";
import {
  deviceLocal,
  hotMix,
  loadRoutingJSON,
  loadRoutingNpy,
  nodeLocal,
  type RankRouting,
  uniform,
  zipf,
} from "../lib/io/routing.ts";
import { encodeNpy, parseNpy } from "../lib/io/npy.ts";
import { computeLayout } from "../dsl/layout.ts";
import type { PlanSpec } from "../dsl/types.ts";
import { makePlan, weftError } from "./fixtures.ts";

/** Ids in range, distinct per token, weights positive, descending, summing to 1. */
function checkWellFormed(plan: PlanSpec, routing: RankRouting[], tokens: number[]): void {
  const K = plan.topK;
  routing.forEach((r, rank) => {
    assert.equal(r.topkIdx.length, tokens[rank] * K);
    assert.equal(r.topkWeights.length, tokens[rank] * K);
    for (let t = 0; t < tokens[rank]; t++) {
      const ids = Array.from(r.topkIdx.subarray(t * K, (t + 1) * K)).filter((e) => e >= 0);
      assert.equal(new Set(ids).size, ids.length, "duplicate expert");
      assert.ok(ids.every((e) => e < plan.experts));
      let sum = 0;
      for (let k = 0; k < K; k++) {
        const w = r.topkWeights[t * K + k];
        if (r.topkIdx[t * K + k] < 0) assert.equal(w, 0);
        else {
          assert.ok(w > 0);
          if (k > 0) assert.ok(w <= r.topkWeights[t * K + k - 1]);
          sum += w;
        }
      }
      if (ids.length > 0) assert.ok(Math.abs(sum - 1) < 1e-6);
    }
  });
}

const plan = makePlan({
  world: 4,
  gpusPerNode: 2,
  experts: 32,
  topK: 4,
  replicas: { experts: [3, 17], copies: 2 },
});
const tokens = [40, 0, 25, 33];

Deno.test("generators are deterministic in the seed and well formed", () => {
  for (const gen of [uniform, zipf, deviceLocal, nodeLocal, hotMix]) {
    const a = gen(plan, { tokens, seed: 5 });
    assert.deepStrictEqual(a, gen(plan, { tokens, seed: 5 }));
    assert.notDeepStrictEqual(a, gen(plan, { tokens, seed: 6 }));
    checkWellFormed(plan, a, tokens);
    // Every slot is used: 32 experts ≥ K everywhere.
    assert.ok(a.every((r) => r.topkIdx.every((e) => e >= 0)), gen.name);
  }
});

Deno.test("deviceLocal keeps every expert on the token's GPU, nodeLocal on its node (replicas included)", () => {
  const dev = computeLayout(plan, deviceLocal(plan, { tokens, seed: 2 }).map((r) => r.topkIdx));
  for (const r of dev.ranks) assert.ok(r.destRank.every((d) => d === r.rank));
  const node = computeLayout(plan, nodeLocal(plan, { tokens, seed: 2 }).map((r) => r.topkIdx));
  for (const r of node.ranks) assert.ok(r.destRank.every((d) => d >> 1 === r.rank >> 1));
  assert.ok(
    node.ranks.some((r) => r.destRank.some((d) => d !== r.rank)),
    "nodeLocal never left the GPU",
  );
});

Deno.test("deviceLocal pads with -1 when a rank holds fewer than K experts", () => {
  const small = makePlan({ world: 4, experts: 8, topK: 3 });
  const r = deviceLocal(small, { tokens: 5 });
  checkWellFormed(small, r, [5, 5, 5, 5]);
  for (const x of r) for (let t = 0; t < 5; t++) assert.equal(x.topkIdx[t * 3 + 2], -1);
});

Deno.test("zipf and hotMix skew expert popularity; uniform does not", () => {
  const big = makePlan({ world: 1, experts: 64, topK: 4 });
  const counts = (rs: RankRouting[]) => {
    const c = new Array(64).fill(0);
    for (const e of rs[0].topkIdx) c[e]++;
    return c.sort((a, b) => b - a);
  };
  const z = counts(zipf(big, { tokens: 2000, s: 1.2 }));
  assert.ok(z[0] > 5 * z[32], `zipf top ${z[0]} vs median ${z[32]}`);
  const h = counts(hotMix(big, { tokens: 2000, hot: 2, hotShare: 0.5 }));
  assert.ok(h[1] > 5 * h[32], `hot ${h[1]} vs median ${h[32]}`);
  const u = counts(uniform(big, { tokens: 2000 }));
  assert.ok(u[0] < 2 * u[32]);
  // Steep skew with K close to E still yields K distinct experts.
  const tight = makePlan({ world: 1, experts: 6, topK: 5 });
  checkWellFormed(tight, zipf(tight, { tokens: 50, s: 4 }), [50]);
});

Deno.test("generator options are validated", () => {
  weftError(() => uniform(plan, { tokens: [1, 2] }), "tokens");
  weftError(() => uniform(plan, { tokens: -1 }), "tokens");
  weftError(() => zipf(plan, { tokens: 1, s: NaN }), "s");
  weftError(() => hotMix(plan, { tokens: 1, hot: 0 }), "hot");
  weftError(() => hotMix(plan, { tokens: 1, hotShare: 1 }), "hotShare");
});

Deno.test("loadRoutingJSON accepts the ranks form, the bare array and the [ranks][T][K] form", () => {
  const ranksForm = loadRoutingJSON(JSON.stringify({
    ranks: [{ topkIdx: [[0, 3], [1, -1]], topkWeights: [[0.25, 0.75], [1, 0]] }, { topkIdx: [] }],
  }));
  assert.deepStrictEqual(ranksForm[0].topkIdx, Int32Array.of(0, 3, 1, -1));
  assert.deepStrictEqual(ranksForm[0].topkWeights, Float32Array.of(0.25, 0.75, 1, 0));
  assert.equal(ranksForm[1].topkIdx.length, 0);
  const bare = loadRoutingJSON([{ topkIdx: [[2, 1, 0]] }]);
  assert.deepStrictEqual(bare[0].topkWeights, Float32Array.of(1 / 3, 1 / 3, 1 / 3));
  const cube = loadRoutingJSON({
    topkIdx: [[[0, 1]], [[2, 3]]],
    topkWeights: [[[0.5, 0.5]], [[0.9, 0.1]]],
  });
  assert.deepStrictEqual(cube[1].topkIdx, Int32Array.of(2, 3));
  assert.deepStrictEqual(cube[1].topkWeights, Float32Array.of(0.9, 0.1));
});

Deno.test("loadRoutingJSON names the path of malformed entries", () => {
  weftError(() => loadRoutingJSON("{"), "routing");
  weftError(() => loadRoutingJSON({ foo: 1 }), "routing");
  weftError(() => loadRoutingJSON({ ranks: [{ topkIdx: [[0, 1], [2]] }] }), "ranks[0].topkIdx[1]");
  weftError(() => loadRoutingJSON({ ranks: [{ topkIdx: [[0, 1.5]] }] }), "ranks[0].topkIdx[0][1]");
  weftError(
    () => loadRoutingJSON({ ranks: [{ topkIdx: [[0, 1]] }, { topkIdx: [[0, 1, 2]] }] }),
    "ranks[1].topkIdx[0]",
  );
  weftError(
    () => loadRoutingJSON({ ranks: [{ topkIdx: [[0, 1]], topkWeights: [[0.5, "x"]] }] }),
    "ranks[0].topkWeights[0][1]",
  );
  weftError(
    () => loadRoutingJSON({ ranks: [{ topkIdx: [[0, 1]], topkWeights: [] }] }),
    "ranks[0].topkWeights",
  );
  weftError(() => loadRoutingJSON({ ranks: [null] }), "ranks[0]");
});

Deno.test("loadRoutingNpy reads [ranks, T, K] and splits [T, K] into contiguous blocks", () => {
  const cube = loadRoutingNpy(encodeNpy(Int32Array.from({ length: 12 }, (_, i) => i), [2, 3, 2]), {
    weights: encodeNpy(new Float64Array(12).fill(0.5), [2, 3, 2]),
  });
  assert.equal(cube.length, 2);
  assert.deepStrictEqual(cube[1].topkIdx, Int32Array.of(6, 7, 8, 9, 10, 11));
  assert.deepStrictEqual(cube[1].topkWeights, new Float32Array(6).fill(0.5));
  // 5 tokens over 3 ranks: ⌊r·5/3⌋ → [0, 1), [1, 3), [3, 5).
  const split = loadRoutingNpy(
    encodeNpy(BigInt64Array.from({ length: 10 }, (_, i) => BigInt(i % 4)), [5, 2]),
    {
      world: 3,
    },
  );
  assert.deepStrictEqual(split.map((r) => r.topkIdx.length / 2), [1, 2, 2]);
  assert.deepStrictEqual(split[2].topkIdx, Int32Array.of(2, 3, 0, 1));
  assert.deepStrictEqual(split[0].topkWeights, Float32Array.of(0.5, 0.5));
});

Deno.test("parseNpy reads version 2 headers and unaligned data", () => {
  const v1 = encodeNpy(Int32Array.of(1, -1, 3), [3]);
  const headerLen = v1[8] | (v1[9] << 8);
  // Version 2 adds two bytes to the length field; pad the copy by one byte to misalign the data.
  const v2 = new Uint8Array(v1.length + 3);
  v2.set(v1.subarray(0, 8), 1);
  v2[7] = 2;
  v2.set([headerLen & 0xff, headerLen >> 8, 0, 0], 9);
  v2.set(v1.subarray(10), 13);
  const a = parseNpy(v2.subarray(1));
  assert.deepStrictEqual(a.shape, [3]);
  assert.deepStrictEqual(a.data, Int32Array.of(1, -1, 3));
});

Deno.test("malformed .npy files are WeftErrors with the reason", () => {
  const good = encodeNpy(Int32Array.of(1, 2, 3, 4), [2, 2]);
  const withHeader = (f: (h: string) => string) => {
    const text = new TextDecoder("latin1").decode(
      good.subarray(10, 10 + (good[8] | (good[9] << 8))),
    );
    const bytes = good.slice();
    bytes.set(new TextEncoder().encode(f(text)), 10);
    return bytes;
  };
  const cases: [Uint8Array, RegExp][] = [
    [Uint8Array.of(1, 2, 3), /magic/],
    [Uint8Array.from([...good.subarray(0, 6), 9, 0, ...good.subarray(8)]), /version/],
    [withHeader((h) => h.replace("False", "True ")), /Fortran/],
    [withHeader((h) => h.replace("<i4", ">i4")), /dtype/],
    [withHeader((h) => h.replace("descr", "dexxx")), /header/],
    [good.subarray(0, good.length - 1), /data bytes/],
  ];
  for (const [bytes, why] of cases) {
    const e = weftError(() => loadRoutingNpy(bytes), "topkIdx.npy");
    assert.match(e.problem, why);
  }
  weftError(() => loadRoutingNpy(encodeNpy(Float32Array.of(1, 2), [1, 2])), "topkIdx.npy");
  weftError(() => loadRoutingNpy(encodeNpy(Int32Array.of(1, 2), [2])), "topkIdx.npy");
  weftError(() => loadRoutingNpy(encodeNpy(BigInt64Array.of(2n ** 40n), [1, 1])), "topkIdx.npy");
  weftError(
    () => loadRoutingNpy(good, { world: 3, weights: encodeNpy(Float32Array.of(1, 2), [1, 2]) }),
    "topkWeights.npy",
  );
  weftError(
    () => loadRoutingNpy(good, { weights: encodeNpy(Int32Array.of(1, 2, 3, 4), [2, 2]) }),
    "topkWeights.npy",
  );
  weftError(
    () => loadRoutingNpy(encodeNpy(Int32Array.of(1, 2), [1, 1, 2]), { world: 2 }),
    "topkIdx.npy",
  );
  weftError(() => encodeNpy(Int32Array.of(1), [2]), "shape");
});

Deno.test("loadRoutingJSON rejects ids that are not int32 integers instead of wrapping them", () => {
  for (const bad of ["4294967299", "4294967295", "1e300", "2147483648", "-2147483649", "1.5"]) {
    const text = `{"ranks":[{"topkIdx":[[0,1]]},{"topkIdx":[[0,1],[2,${bad}]]}]}`;
    const e = weftError(() => loadRoutingJSON(text), "ranks[1].topkIdx[1][1]", 1);
    assert.match(e.message, /rank 1 token 1 slot 1/);
    assert.ok(e.message.includes(`got ${Number(bad)}`), e.message);
  }
  // The [ranks][T][K] form names the same path.
  weftError(() => loadRoutingJSON({ topkIdx: [[[0, 2 ** 32 + 3]]] }), "ranks[0].topkIdx[0][1]", 0);
  // The int32 extremes themselves are accepted.
  const ok = loadRoutingJSON({ ranks: [{ topkIdx: [[-2147483648, 2147483647]] }] });
  assert.deepStrictEqual(Array.from(ok[0].topkIdx), [-2147483648, 2147483647]);
});
