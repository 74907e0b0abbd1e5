import assert from "node:assert/strict";
import {
  type BenchResult,
  type BenchRow,
  derive,
  markdownTable,
  median,
  TABLE_COLUMNS,
  toJson,
} from "../bench/report.ts";
import { batchTraffic, SCENARIOS } from "../bench/scenarios.ts";
import { experts } from "../dsl/mod.ts";

const ROW_BYTES = 7168 * 2;

function row(tokens: number, scenario: string, weftMs: number, baselineMs: number): BenchRow {
  const dispatch = tokens * 2.7 * ROW_BYTES;
  return {
    tokens,
    scenario,
    weftMs,
    weftDispatchMs: weftMs / 2,
    weftCopyInMs: weftMs * 1.05,
    baselineMs,
    redispatchMs: weftMs / 3,
    layoutMs: null,
    weftDispatchRemoteBytes: dispatch,
    weftOutgoingRemoteBytes: 2 * dispatch,
    baselineDispatchRemoteBytes: tokens * 6 * ROW_BYTES,
    weftMsPerRank: [weftMs, weftMs * 0.9],
    baselineMsPerRank: [baselineMs, baselineMs * 0.95],
    links: [{ src: 0, dst: 1, weftBytes: dispatch / 3, baselineBytes: tokens * 2 * ROW_BYTES }],
    weftError: 2e-3,
    baselineError: 3e-3,
  };
}

function synthetic(): BenchResult {
  const rows: BenchRow[] = [];
  for (const tokens of [4096, 8192, 16384, 32768]) {
    for (const scenario of ["uniform", "zipf", "local", "hotmix"]) {
      rows.push(row(tokens, scenario, tokens / 4096, (tokens / 4096) * 5));
    }
  }
  return {
    device: "4× Synthetic GPU",
    date: "2026-11-22T10:00:00.000Z",
    world: 4,
    hidden: 7168,
    experts: 256,
    topK: 8,
    dtype: "bf16",
    iters: 10,
    warmup: 3,
    combineWire: "f32",
    copyCeiling: {
      bytes: 2 ** 30,
      pairs: [{ src: 0, dst: 1, gbps: 400 }, { src: 1, dst: 0, gbps: 380 }],
      gbps: 400,
    },
    rows,
    notes: ["layout ms: n/a (synthetic)"],
  };
}

function tableBody(md: string): string[][] {
  return md.split("\n").filter((l) => l.startsWith("| ") && /^\| \d/.test(l))
    .map((l) => l.slice(2, -2).split(" | "));
}

Deno.test("markdown table has the header and one line per row, in order", () => {
  const result = synthetic();
  const md = markdownTable(result);
  assert.ok(md.startsWith(`| ${TABLE_COLUMNS.join(" | ")} |\n`));
  const body = tableBody(md);
  assert.equal(body.length, result.rows.length);
  body.forEach((cells, i) => {
    assert.equal(cells.length, TABLE_COLUMNS.length);
    assert.equal(Number(cells[0]), result.rows[i].tokens);
    assert.equal(cells[1], result.rows[i].scenario);
  });
});

Deno.test("speedup is baseline time over weft time", () => {
  const r = row(16384, "uniform", 2.5, 23.28);
  assert.equal(derive(r, null).speedup, 23.28 / 2.5);
  const md = markdownTable({ ...synthetic(), rows: [r] });
  assert.equal(tableBody(md)[0][4], `${(23.28 / 2.5).toFixed(2)}×`);
});

Deno.test("achieved GB/s is max per-rank outgoing remote bytes over weft time; % uses the ceiling", () => {
  const r: BenchRow = { ...row(4096, "zipf", 4, 8), weftOutgoingRemoteBytes: 1.2e9 };
  const d = derive(r, 600);
  assert.equal(d.achievedGBps, 1.2e9 / 4e-3 / 1e9);
  assert.equal(d.ceilingPercent, 50);
  assert.equal(d.weftRemoteMBPerDir, r.weftDispatchRemoteBytes / 1e6);
  assert.equal(derive(r, null).ceilingPercent, null);
});

Deno.test("missing measurements print as n/a, and a missing ceiling drops only the percentage", () => {
  const r: BenchRow = {
    ...row(4096, "local", 1, 2),
    weftCopyInMs: null,
    redispatchMs: null,
    layoutMs: null,
  };
  const md = markdownTable({ ...synthetic(), copyCeiling: null, rows: [r] });
  const cells = tableBody(md)[0];
  const at = (name: string): string => cells[TABLE_COLUMNS.indexOf(name)];
  assert.equal(at("weft ms, inputs copied in"), "n/a");
  assert.equal(at("weft ms, e4m3 dispatch"), "n/a"); // absent from the row
  assert.equal(at("% of copy ceiling"), "n/a");
  assert.equal(at("redispatch ms"), "n/a");
  assert.equal(at("layout ms"), "n/a");
  assert.notEqual(at("achieved GB/s"), "n/a"); // needs no ceiling
  assert.ok(!md.includes("copy ceiling ("));
});

Deno.test("notes and run conditions follow the table", () => {
  const md = markdownTable(synthetic());
  assert.ok(md.includes("- layout ms: n/a (synthetic)"));
  assert.ok(md.includes("median of 10 iterations per rank, max over ranks"));
  assert.ok(md.includes("400.0 GB/s (fastest of 2 pairs; slowest 380.0 GB/s)"));
});

Deno.test("JSON round-trips the record and adds derived metrics per row", () => {
  const result = synthetic();
  const parsed = JSON.parse(toJson(result));
  assert.equal(parsed.rows.length, result.rows.length);
  assert.equal(parsed.rows[0].speedup, result.rows[0].baselineMs / result.rows[0].weftMs);
  assert.equal(parsed.copyCeiling.gbps, 400);
  assert.deepEqual(parsed.rows[3].weftMsPerRank, result.rows[3].weftMsPerRank);
  assert.deepEqual(parsed.rows[3].links, result.rows[3].links);
});

Deno.test("median takes the middle value, or the mean of the middle two", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.throws(() => median([]), RangeError);
});

Deno.test("link bytes: weft sends one row per (token, remote GPU), the baseline one per (token, remote expert)", () => {
  // 2 ranks × 2 experts; bf16 rows of 8 elements = 16 B; f32 combine wire = 32 B a row.
  const plan = experts(4).byDevice().topK(2).dtype("bf16").hidden(8).compile({ world: 2 });
  const t = batchTraffic(plan, [Int32Array.of(2, 3, 0, 2), Int32Array.of(0, 1, 3, 2)], 32);
  // rank 0: token 0 → rank 1 once (two experts there), token 1 → rank 1 once; rank 1: token 0 → rank 0 once.
  assert.deepEqual(t.weftDispatchOut, [2 * 16, 1 * 16]);
  assert.deepEqual(t.baselineDispatchOut, [3 * 16, 2 * 16]);
  // combine returns one partial per dispatched row, from the expert side.
  assert.deepEqual(t.weftCombineOut, [1 * 32, 2 * 32]);
  assert.deepEqual(
    t.links.map((l) => [l.src, l.dst, l.weftBytes, l.baselineBytes]),
    [[0, 1, 32, 48], [1, 0, 16, 32]],
  );
});

Deno.test("every scenario routes K distinct in-range experts per token; local stays on its GPU", () => {
  const plan = experts(64).byDevice().topK(8).dtype("bf16").hidden(64).compile({ world: 4 });
  for (const s of SCENARIOS) {
    const routing = s.route(plan, 256, 7);
    assert.equal(routing.length, 4, s.name);
    for (const r of routing) {
      assert.equal(r.topkIdx.length, 256 * 8);
      for (let t = 0; t < 256; t++) {
        const ids = r.topkIdx.subarray(t * 8, t * 8 + 8);
        assert.equal(new Set(ids).size, 8, `${s.name}: duplicate expert`);
        assert.ok(ids.every((e) => e >= 0 && e < 64), `${s.name}: id out of range`);
      }
    }
    const t = batchTraffic(plan, routing.map((r) => r.topkIdx), 256);
    if (s.name === "local") assert.ok(t.weftDispatchOut.every((b) => b === 0));
    else assert.ok(t.weftDispatchOut.every((b) => b > 0), s.name);
  }
});
