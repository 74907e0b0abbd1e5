import assert from "node:assert/strict";
import { escapeXml, latencyChart, niceTicks } from "../bench/chart.ts";
import type { BenchResult, BenchRow } from "../bench/report.ts";

/**
 * A small well-formedness check, enough for hand-built SVG: one root, every
 * tag closed in order, quoted attributes, no duplicate attribute, text with
 * only the five predefined entities or numeric references.
 */
function checkWellFormed(xml: string): { root: string; tags: string[] } {
  const stack: string[] = [];
  const tags: string[] = [];
  let roots = 0;
  let i = 0;
  const text = (s: string): void => {
    assert.ok(!s.includes("<"), `raw '<' in text: ${s}`);
    for (const m of s.matchAll(/&([^;]*);?/g)) {
      assert.match(m[0], /^&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);$/, `bad entity ${m[0]}`);
    }
  };
  while (i < xml.length) {
    const lt = xml.indexOf("<", i);
    if (lt < 0) {
      assert.equal(xml.slice(i).trim(), "", "text after the root element");
      break;
    }
    const between = xml.slice(i, lt);
    if (stack.length === 0) assert.equal(between.trim(), "", "text outside the root element");
    else text(between);
    if (xml.startsWith("<?", lt)) {
      assert.equal(lt, 0, "XML declaration must come first");
      i = xml.indexOf("?>", lt) + 2;
      continue;
    }
    if (xml.startsWith("<!--", lt)) {
      i = xml.indexOf("-->", lt) + 3;
      continue;
    }
    const gt = xml.indexOf(">", lt);
    assert.ok(gt > lt, "unterminated tag");
    const inner = xml.slice(lt + 1, gt);
    i = gt + 1;
    if (inner.startsWith("/")) {
      assert.equal(inner.slice(1).trim(), stack.pop(), "mismatched closing tag");
      continue;
    }
    const selfClosing = inner.endsWith("/");
    const body = selfClosing ? inner.slice(0, -1) : inner;
    const m = /^([A-Za-z_][\w.:-]*)([\s\S]*)$/.exec(body);
    assert.ok(m, `bad tag <${inner}>`);
    const [, name, attrs] = m;
    const seen = new Set<string>();
    const rest = attrs.replace(/\s+([A-Za-z_][\w.:-]*)\s*=\s*"([^"]*)"/g, (_, a: string, v) => {
      assert.ok(!seen.has(a), `duplicate attribute ${a} on <${name}>`);
      seen.add(a);
      text(v);
      return "";
    });
    assert.equal(rest.trim(), "", `unparsed attribute text on <${name}>: ${rest}`);
    if (stack.length === 0) roots++;
    tags.push(name);
    if (!selfClosing) stack.push(name);
  }
  assert.equal(stack.length, 0, `unclosed: ${stack.join(",")}`);
  assert.equal(roots, 1, "exactly one root element");
  return { root: tags[0], tags };
}

function result(scenarios: string[], sizes: number[]): BenchResult {
  const rows: BenchRow[] = [];
  for (const tokens of sizes) {
    for (const scenario of scenarios) {
      rows.push({
        tokens,
        scenario,
        weftMs: tokens / 8000,
        weftDispatchMs: null,
        weftCopyInMs: null,
        baselineMs: tokens / 700,
        redispatchMs: null,
        layoutMs: null,
        weftDispatchRemoteBytes: 1e8,
        weftOutgoingRemoteBytes: 2e8,
        baselineDispatchRemoteBytes: 3e8,
        weftMsPerRank: [],
        baselineMsPerRank: [],
        links: [],
        weftError: null,
        baselineError: null,
      });
    }
  }
  return {
    device: "4× Synthetic <GPU> & co",
    date: "2026-11-22T10:00:00.000Z",
    world: 4,
    hidden: 7168,
    experts: 256,
    topK: 8,
    dtype: "bf16",
    iters: 10,
    warmup: 3,
    combineWire: "f32",
    copyCeiling: null,
    rows,
    notes: [],
  };
}

Deno.test("chart is well-formed SVG with one panel per scenario", () => {
  const scenarios = ["uniform", "zipf", "local", "hotmix"];
  const svg = latencyChart(result(scenarios, [4096, 8192, 16384, 32768]));
  const { root } = checkWellFormed(svg);
  assert.equal(root, "svg");
  const panels = [...svg.matchAll(/<g class="panel" data-scenario="([^"]*)"/g)].map((m) => m[1]);
  assert.deepEqual(panels, scenarios);
  // two series a panel, four points each
  const lines = [...svg.matchAll(/<polyline[^>]*points="([^"]*)"/g)];
  assert.equal(lines.length, 2 * scenarios.length);
  for (const l of lines) assert.equal(l[1].split(" ").length, 4);
});

Deno.test("chart carries title with device and date, legend and axis labels", () => {
  const svg = latencyChart(result(["uniform"], [4096, 16384]));
  checkWellFormed(svg);
  assert.ok(svg.includes("4× Synthetic &lt;GPU&gt; &amp; co"));
  assert.ok(svg.includes("2026-11-22"));
  assert.ok(svg.includes(">weft</text>") && svg.includes(">NCCL baseline</text>"));
  assert.ok(svg.includes("tokens per GPU (log₂ scale)") && svg.includes("latency, ms"));
  assert.ok(svg.includes(">4k</text>") && svg.includes(">16k</text>"));
});

Deno.test("x positions follow log2 of tokens: equal steps for each doubling", () => {
  const svg = latencyChart(result(["uniform"], [4096, 8192, 16384]));
  const pts = /<polyline[^>]*points="([^"]*)"/.exec(svg)![1].split(" ")
    .map((p) => Number(p.split(",")[0]));
  assert.ok(Math.abs((pts[1] - pts[0]) - (pts[2] - pts[1])) < 0.2);
});

Deno.test("a single size and non-finite times still give a well-formed chart", () => {
  const r = result(["uniform"], [8192]);
  const svg = latencyChart({ ...r, rows: [{ ...r.rows[0], baselineMs: NaN }] });
  checkWellFormed(svg);
  assert.ok(!svg.includes("NaN"));
});

Deno.test("nice ticks are round steps covering the maximum", () => {
  assert.deepEqual(niceTicks(45.44), [0, 10, 20, 30, 40, 50]);
  assert.deepEqual(niceTicks(0.9), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0), [0, 1]);
});

Deno.test("escapeXml escapes the five markup characters", () => {
  assert.equal(
    escapeXml(`<a href="x">'&'</a>`),
    "&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;",
  );
});

Deno.test("the e4m3 series is drawn where rows carry it, and only there", () => {
  const base = result(["uniform", "zipf"], [4096, 16384]);
  const rows = base.rows.map((r) =>
    r.scenario === "uniform" ? { ...r, weftE4m3Ms: r.weftMs * 0.8 } : r
  );
  const svg = latencyChart({ ...base, rows });
  checkWellFormed(svg);
  const series = [...svg.matchAll(/data-series="([^"]*)"/g)].map((m) => m[1]);
  assert.equal(series.filter((s) => s === "weft, e4m3 dispatch").length, 1);
  assert.equal(series.length, 5); // weft + baseline in both panels, e4m3 in one
  assert.ok(svg.includes(">weft, e4m3 dispatch</text>"));
});
