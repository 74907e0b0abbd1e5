// The native hierarchical dispatch fans out slice j of every (forwarder,
// source) stream as soon as step j of the transfer has landed; the rows of
// each slice come from native/src/hier_slices.h, computed on the host. They
// must be exactly the rows lib/sim/slices.ts's schedule moves in step j, or
// a destination would read rows that have not landed yet (or skip some).
// This builds the header alone with the host C++ compiler (no CUDA) and
// compares on random stream sets laid out as hier_tables.cu lays out a
// node's staging (per forwarder, its sources' streams back to back, empty
// ones included).
import assert from "node:assert/strict";
import { hasHostCompiler, runHostHarness } from "./fixtures/host_cxx.ts";
import { sliceSchedule } from "../lib/sim/slices.ts";
import { mulberry32 } from "../lib/io/routing.ts";

// Reads cases "C n (lf src first rows){n}" per line; prints per case one line:
// J, then per slice need ent_lo ent_hi row_lo row_hi, then the piece count
// and per piece lf src first rows prefix, then prefix[n], then all()'s four bounds.
const HARNESS = `#include <cstdio>
#include "hier_slices.h"
int main() {
  int C, n;
  while (std::scanf("%d %d", &C, &n) == 2) {
    std::vector<weft::FanStream> streams(n);
    for (auto& s : streams) std::scanf("%d %d %d %d", &s.lf, &s.src, &s.first, &s.rows);
    weft::FanTable t;
    weft::fan_slice_table(streams, C, &t);
    std::printf("%d", static_cast<int>(t.slices.size()));
    for (const auto& s : t.slices) std::printf(" %u %d %d %d %d", s.need, s.ent_lo, s.ent_hi, s.row_lo, s.row_hi);
    std::printf(" %d", t.pieces());
    for (int i = 0; i < t.pieces(); ++i) {
      std::printf(" %d %d %d %d %d", t.ent[4 * i], t.ent[4 * i + 1], t.ent[4 * i + 2], t.ent[4 * i + 3], t.prefix[i]);
    }
    const weft::FanSlice a = t.all();
    std::printf(" %d %d %d %d %d\\n", t.rows(), a.ent_lo, a.ent_hi, a.row_lo, a.row_hi);
  }
  return 0;
}
`;

interface Stream {
  lf: number;
  src: number;
  first: number;
  rows: number;
}

interface Case {
  C: number;
  streams: Stream[];
}

// A node of gpn forwarders, each staging the streams of nodes-1 sources
// back to back (hier_tables.cu); sources are unique ranks, as in a real table.
function randomCase(rng: () => number, i: number): Case {
  const gpn = 1 + Math.floor(rng() * 8), nodes = 2 + Math.floor(rng() * 4);
  const top = i % 3 === 0 ? 4 : i % 3 === 1 ? 40 : 300;
  const streams: Stream[] = [];
  let src = 0;
  for (let lf = 0; lf < gpn; lf++) {
    let first = 0;
    for (let m = 0; m < nodes - 1; m++) {
      const rows = rng() < 0.25 ? 0 : Math.floor(rng() * top);
      streams.push({ lf, src: src++, first, rows });
      first += rows;
    }
  }
  const C = i % 7 === 0 ? 512 : 1 + Math.floor(rng() * 12);
  return { C, streams };
}

function checkCase(c: Case, line: string, label: string): void {
  const v = line.trim().split(" ").map(Number);
  let at = 0;
  const next = () => v[at++];
  const schedule = sliceSchedule(
    c.streams.map((s) => ({ src: s.src, dst: s.lf, rows: s.rows })),
    c.C,
  );
  const J = next();
  assert.equal(J, schedule.length, `${label}: slice count`);
  const slices = Array.from({ length: J }, () => ({
    need: next(),
    entLo: next(),
    entHi: next(),
    rowLo: next(),
    rowHi: next(),
  }));
  const n = next();
  const pieces = Array.from({ length: n }, () => ({
    lf: next(),
    src: next(),
    first: next(),
    rows: next(),
    prefix: next(),
  }));
  const total = next();
  const all = [next(), next(), next(), next()];
  assert.equal(at, v.length, `${label}: output length`);
  const bySrc = new Map(c.streams.map((s) => [s.src, s]));
  // Each slice holds exactly step j's transfers, in order, at the rows
  // where its forwarder staged them.
  let entAt = 0, rowAt = 0;
  slices.forEach((sl, j) => {
    const step = schedule[j];
    assert.equal(sl.entLo, entAt, `${label}: slice ${j} first piece`);
    assert.equal(sl.entHi - sl.entLo, step.length, `${label}: slice ${j} pieces`);
    assert.equal(sl.rowLo, rowAt, `${label}: slice ${j} first row`);
    let need = 0;
    step.forEach((tr, k) => {
      const p = pieces[sl.entLo + k];
      const s = bySrc.get(tr.src)!;
      assert.deepEqual(
        [p.lf, p.src, p.first, p.rows, p.prefix],
        [tr.dst, tr.src, s.first + tr.firstRow, tr.rows, rowAt],
        `${label}: slice ${j} piece ${k}`,
      );
      rowAt += tr.rows;
      need |= 1 << tr.dst;
    });
    assert.equal(sl.rowHi, rowAt, `${label}: slice ${j} end row`);
    assert.equal(sl.need >>> 0, need >>> 0, `${label}: slice ${j} forwarders`);
    entAt = sl.entHi;
  });
  assert.equal(entAt, n, `${label}: every piece is in a slice`);
  assert.equal(total, rowAt, `${label}: total rows`);
  assert.deepEqual(all, [0, n, 0, total], `${label}: all()`);
  // Every staged row of every forwarder, exactly once.
  const seen = new Map<string, number>();
  for (const p of pieces) {
    for (let r = p.first; r < p.first + p.rows; r++) {
      const key = `${p.lf}:${r}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
  }
  let staged = 0;
  for (const s of c.streams) {
    for (let r = s.first; r < s.first + s.rows; r++) {
      assert.equal(seen.get(`${s.lf}:${r}`), 1, `${label}: forwarder ${s.lf} row ${r}`);
      staged++;
    }
  }
  assert.equal(seen.size, staged, `${label}: no row outside the staging`);
}

Deno.test({
  name: "native hier_slices.h cuts the fan-out table as lib/sim/slices.ts schedules the steps",
  ignore: !(await hasHostCompiler()),
  fn: async () => {
    const rng = mulberry32(14);
    const cases: Case[] = [
      // Edge cases: nothing at all, all empty, one row, C = 1, C > every stream.
      { C: 4, streams: [] },
      {
        C: 3,
        streams: [{ lf: 0, src: 0, first: 0, rows: 0 }, { lf: 1, src: 1, first: 0, rows: 0 }],
      },
      { C: 1, streams: [{ lf: 0, src: 5, first: 0, rows: 1 }] },
      {
        C: 1,
        streams: [{ lf: 0, src: 0, first: 0, rows: 3 }, { lf: 0, src: 1, first: 3, rows: 2 }],
      },
      {
        C: 100,
        streams: [{ lf: 1, src: 2, first: 0, rows: 7 }, { lf: 0, src: 3, first: 0, rows: 9 }],
      },
    ];
    for (let i = 0; i < 400; i++) cases.push(randomCase(rng, i));
    const input = cases.map((c) =>
      `${c.C} ${c.streams.length} ${
        c.streams.map((s) => `${s.lf} ${s.src} ${s.first} ${s.rows}`).join(" ")
      }`
    ).join("\n") + "\n";
    const lines = await runHostHarness(HARNESS, input);
    assert.equal(lines.length, cases.length);
    cases.forEach((c, i) =>
      checkCase(c, lines[i], `case ${i} (C ${c.C})`)
    );
  },
});
