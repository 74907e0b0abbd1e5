import assert from "node:assert/strict";
import { experts } from "../dsl/mod.ts";
import { explore } from "../lib/explore/explore.ts";
import { explorePictures, formatReport } from "../lib/explore/format.ts";
import { main, parseArgs } from "../lib/explore/cli.ts";
import { TOPOLOGIES } from "../lib/model/topology.ts";
import { routeBySpec } from "../lib/explore/routing_spec.ts";
import { crossNodeLoads, forwarderLoads, greedyTable, railTable } from "../dsl/balance.ts";

/**
 * A small XML well-formedness check: tags nest and close, attributes are
 * quoted, text holds no bare `<` or `&` outside entities. Returns the
 * elements as [name, attributes].
 */
function parseXml(text: string): [string, Record<string, string>][] {
  const elements: [string, Record<string, string>][] = [];
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/y;
  let i = 0;
  while (i < text.length) {
    const lt = text.indexOf("<", i);
    const chunk = text.slice(i, lt < 0 ? text.length : lt);
    assert.ok(!/&(?!(amp|lt|gt|quot|apos);)/.test(chunk), `bare & in "${chunk}"`);
    if (lt < 0) break;
    tag.lastIndex = lt;
    const m = tag.exec(text);
    assert.ok(m, `malformed tag at ${lt}: ${text.slice(lt, lt + 60)}`);
    const [, close, name, attrs, self] = m;
    if (close) assert.equal(stack.pop(), name, `</${name}> closes the wrong element`);
    else {
      const a: Record<string, string> = {};
      for (const [, k, v] of attrs.matchAll(/([\w:-]+)="([^"]*)"/g)) {
        assert.ok(!(k in a), `attribute ${k} twice`);
        a[k] = v;
      }
      elements.push([name, a]);
      if (!self) stack.push(name);
    }
    i = tag.lastIndex;
  }
  assert.equal(stack.length, 0, `unclosed: ${stack.join(",")}`);
  assert.equal(elements[0]?.[0], "svg");
  return elements;
}

const topology = { ...TOPOLOGIES["h100-8x8-roce"], nodes: 2, gpusPerNode: 4 };
const pattern = experts(32).byDevice().topK(4).hidden(256).dedupe("node").spec;

Deno.test("explore: the numbers it prints are the layout's traffic", () => {
  const r = explore({ pattern, topology, routing: { name: "zipf", tokens: 200, tokenSkew: 0.5 } });
  let intra = 0, inter = 0;
  for (const l of r.layout.links) {
    const rows = l.rows + l.forwardedRows;
    assert.equal(r.matrix[l.src][l.dst], rows);
    if ((l.src >> 2) === (l.dst >> 2)) intra += rows;
    else inter += rows;
  }
  const total = r.layout.ranks.reduce((a, x) => a + x.recvRows, 0);
  assert.equal(r.perExpert.reduce((a, b) => a + b, 0), total);
  const text = formatReport(r);
  assert.match(text, new RegExp(`inside nodes \\(NVLink\\)\\s*\\|\\s*${intra} \\|`));
  assert.match(text, new RegExp(`between nodes \\(NIC\\)\\s*\\|\\s*${inter} \\|`));
  assert.deepEqual(r.modes.map((m) => m.dedupe), ["none", "device", "node"]);
  assert.ok(r.modes[2].greedy !== undefined && r.modes[1].greedy === undefined);
  assert.match(text, /greedy \(FUSCO Alg\. 1\)/);
});

Deno.test("explore: SVGs are well-formed with one cell per rank pair and one bar per expert", () => {
  const r = explore({ pattern, topology, routing: { name: "hotmix", tokens: 100 } });
  const pics = explorePictures(r);
  const cells = parseXml(pics["traffic.svg"]).filter(([n, a]) =>
    n === "rect" && a.class === "cell"
  );
  assert.equal(cells.length, 8 * 8);
  for (const [, a] of cells) {
    assert.equal(Number(a["data-value"]), r.matrix[+a["data-src"]][+a["data-dst"]]);
  }
  const bars = parseXml(pics["experts.svg"]).filter(([n, a]) => n === "rect" && a.class === "bar");
  assert.equal(bars.length, 32);
  for (const [, a] of bars) assert.equal(Number(a["data-value"]), r.perExpert[+a["data-index"]]);
  const stages = parseXml(pics["stages.svg"]).filter(([n, a]) =>
    n === "rect" && a.class === "stage"
  );
  assert.equal(stages.length, 4 * 8); // none, device, node, node+greedy × 8 stages
  const node = stages.filter(([, a]) => a["data-bar"] === "node");
  const sum = node.reduce((s, [, a]) => s + Number(a["data-value"]), 0);
  assert.ok(Math.abs(sum - r.modes[2].prediction.totalMs) < 1e-9);
  assert.throws(() => parseXml("<svg><rect></svg>"));
});

Deno.test("explore CLI: flags, a YAML pattern, pictures written", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/p.yaml`, experts(16).byDevice().topK(2).hidden(64).toYAML());
    const text = await main([
      "--pattern",
      `${dir}/p.yaml`,
      "--topology",
      "h100-8x8-roce",
      "--nodes",
      "2",
      "--gpus-per-node",
      "2",
      "--routing",
      "onenode",
      "--tokens",
      "64",
      "--svg",
      `${dir}/svg`,
    ]);
    assert.match(text, /Predicted ms per stage/);
    for (const f of ["traffic.svg", "experts.svg", "stages.svg"]) {
      parseXml(await Deno.readTextFile(`${dir}/svg/${f}`));
    }
    assert.equal(parseArgs(["--tokens=5", "--fusco"]).get("tokens"), "5");
    await assert.rejects(() => main(["--routing", "nope", "--tokens", "4"]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("explore: the busiest forwarder's rows with and without the balancer, zipf and hot expert", () => {
  const topo = { ...TOPOLOGIES["h100-8x8-roce"], nodes: 4, gpusPerNode: 4 };
  const p = experts(64).byDevice().topK(6).hidden(256).dedupe("node").spec;
  for (
    const routing of [{ name: "zipf", tokens: 300, tokenSkew: 0.8 }, {
      name: "hotmix",
      tokens: 300,
    }]
  ) {
    const r = explore({ pattern: p, topology: topo, routing });
    const node = r.modes.find((m) => m.dedupe === "node")!;
    // What each forwarder stages, recomputed from the routing under each table.
    const idx = routeBySpec(r.plan, routing).map((x) => x.topkIdx);
    const l = r.plan.layout(idx);
    const W = r.plan.world, N = r.plan.nodes, gpn = r.plan.gpusPerNode;
    const nodeRows = new Float64Array(W * N);
    for (const rl of l.ranks) {
      for (let m = 0; m < N; m++) {
        if (m !== Math.floor(rl.rank / gpn)) {
          const f = m * gpn + (rl.rank % gpn);
          nodeRows[rl.rank * N + m] = rl.sendOffsets[f + 1] - rl.sendOffsets[f];
        }
      }
    }
    const loads = crossNodeLoads(l.ranks.map((x) => x.destRank), r.plan.topK, gpn);
    const rail = Math.max(...forwarderLoads(nodeRows, railTable(W, gpn)));
    const greedy = Math.max(...forwarderLoads(nodeRows, greedyTable(loads, gpn)));
    assert.equal(node.prediction.bytes.busiestForwarderRows, rail, routing.name);
    assert.equal(node.greedy!.bytes.busiestForwarderRows, greedy, routing.name);
    const text = formatReport(r);
    assert.match(text, new RegExp(`rail \\(same local index\\)\\s*\\|\\s*${rail} \\|`));
    assert.match(text, new RegExp(`greedy \\(FUSCO Alg\\. 1\\)\\s*\\|\\s*${greedy} \\|`));
    // A pattern that asks for greedy itself: its own layout is the greedy one; same two rows.
    const own = explore({ pattern: { ...p, balance: "greedy" }, topology: topo, routing });
    const ownNode = own.modes.find((m) => m.dedupe === "node")!;
    assert.equal(ownNode.prediction.bytes.busiestForwarderRows, rail);
    assert.equal(ownNode.greedy!.bytes.busiestForwarderRows, greedy);
    assert.equal(Math.max(...own.layout.ranks.map((x) => x.forwardOffsets[W])), greedy);
    assert.match(formatReport(own), /dedupe node \(balance greedy\)/);
  }
});
