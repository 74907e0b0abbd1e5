/**
 * `deno task explore`: what would this pattern, on this routing, cost on this
 * machine? Prints the traffic, the load, the bytes per link class for each
 * dedupe mode, the balancer's effect and the cost model's prediction; writes
 * SVG pictures with `--svg DIR`. `--calibrate` prints the model against our
 * measured rows, `--fusco` against FUSCO's published figures. No GPU needed.
 *
 * @module
 */
import type { Dedupe, PatternSpec } from "../../dsl/types.ts";
import { experts } from "../../dsl/mod.ts";
import { fromJSON, fromYAML } from "../../dsl/pattern.ts";
import { WeftError } from "../../dsl/errors.ts";
import { TOPOLOGY_FLAGS, topologyFrom } from "../model/topology.ts";
import { calibrate } from "../model/calibration.ts";
import { fuscoTable } from "../model/fusco.ts";
import { explore } from "./explore.ts";
import { explorePictures, formatReport } from "./format.ts";

const USAGE = `deno task explore [--pattern FILE.ts|.yaml|.json] [--dedupe none|device|node]
  [--routing uniform|zipf|hotmix|local|nodelocal|onenode|TRACE.json|TRACE.npy] [--tokens N[,N…]]
  [--seed 1] [--s 1] [--hot N] [--hot-share 0.5] [--token-skew 0]
  [--topology h200x4|h200x8|h100-8x8-roce] [--nodes N] [--gpus-per-node N] [--nics N]
  [--nic-gbs G] [--nvlink-read-gbs G] [--nvlink-write-gbs G] [--hbm-gbs G] [--nic-half-duplex]
  [--combine-wire dtype|f32] [--svg DIR] [--json FILE] | --calibrate | --fusco [--tokens N[,N…]]
Default pattern: DeepSeek-V3 (256 experts by device, top-8, hidden 7168 bf16, dedupe node).`;

const BOOLEAN = new Set(["nic-half-duplex", "calibrate", "fusco", "help"]);

/** Parses `--key value` / `--key=value` / boolean flags. */
export function parseArgs(args: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith("--")) {
      throw new WeftError({ field: a, problem: "is not an option", fix: USAGE });
    }
    const eq = a.indexOf("=");
    const key = eq > 0 ? a.slice(2, eq) : a.slice(2);
    if (BOOLEAN.has(key)) out.set(key, "true");
    else if (eq > 0) out.set(key, a.slice(eq + 1));
    else if (i + 1 < args.length) out.set(key, args[++i]);
    else throw new WeftError({ field: a, problem: "needs a value", fix: USAGE });
  }
  return out;
}

/** The pattern of `--pattern` (a DSL module exporting `pattern` or a default, YAML, JSON). */
export async function loadPattern(path: string | undefined): Promise<PatternSpec> {
  if (path === undefined) {
    return experts(256).byDevice().topK(8).hidden(7168).dedupe("node").spec;
  }
  if (path.endsWith(".yaml") || path.endsWith(".yml")) {
    return fromYAML(await Deno.readTextFile(path)).spec;
  }
  if (path.endsWith(".json")) return fromJSON(JSON.parse(await Deno.readTextFile(path))).spec;
  const url = new URL(path, `file://${Deno.cwd()}/`).href;
  const mod = await import(url) as Record<string, unknown>;
  const v = (mod.pattern ?? mod.default) as { spec?: PatternSpec } | PatternSpec | undefined;
  const spec = v && "spec" in v ? v.spec : v as PatternSpec | undefined;
  if (spec === undefined || typeof spec !== "object" || typeof spec.topK !== "number") {
    throw new WeftError({
      field: "--pattern",
      problem: `${path} exports no complete pattern`,
      fix: "export const pattern = experts(256).byDevice().topK(8).hidden(7168)",
    });
  }
  return spec;
}

const num = (v: string | undefined) => (v === undefined ? undefined : Number(v));

/** Runs the explorer; returns the text it printed. */
export async function main(args: readonly string[]): Promise<string> {
  const o = parseArgs(args);
  if (o.has("help")) return USAGE + "\n";
  const flags: Record<string, string | undefined> = {};
  for (const f of Object.keys(TOPOLOGY_FLAGS)) flags[f] = o.get(f);
  const tokensList = (o.get("tokens") ?? "16384").split(",").map(Number);
  const cost = {
    combineWire: o.get("combine-wire") === "f32" ? "f32" as const : "dtype" as const,
    nicHalfDuplex: o.has("nic-half-duplex"),
  };
  if (o.has("calibrate")) return calibrationText();
  if (o.has("fusco")) {
    const topo = topologyFrom(o.get("topology") ?? "h100-8x8-roce", flags);
    return fuscoText(fuscoTable((c) => tokensList.includes(c.tokens), topo, cost));
  }
  const topology = topologyFrom(o.get("topology") ?? "h200x4", flags);
  let pattern = await loadPattern(o.get("pattern"));
  const dedupe = o.get("dedupe") as Dedupe | undefined;
  if (dedupe !== undefined) pattern = { ...pattern, dedupe };
  const result = explore({
    pattern,
    topology,
    cost,
    routing: {
      name: o.get("routing") ?? "uniform",
      tokens: tokensList.length === 1 ? tokensList[0] : tokensList,
      seed: num(o.get("seed")),
      s: num(o.get("s")),
      hot: num(o.get("hot")),
      hotShare: num(o.get("hot-share")),
      tokenSkew: num(o.get("token-skew")),
    },
  });
  let text = formatReport(result);
  const dir = o.get("svg");
  if (dir !== undefined) {
    await Deno.mkdir(dir, { recursive: true });
    for (const [name, svg] of Object.entries(explorePictures(result))) {
      await Deno.writeTextFile(`${dir}/${name}`, svg);
      text += `wrote ${dir}/${name}\n`;
    }
  }
  const json = o.get("json");
  if (json !== undefined) {
    await Deno.writeTextFile(
      json,
      JSON.stringify(
        {
          topology,
          pattern,
          modes: result.modes,
          perExpert: result.perExpert,
          matrix: result.matrix,
        },
        null,
        1,
      ),
    );
    text += `wrote ${json}\n`;
  }
  return text;
}

function calibrationText(): string {
  const rows = calibrate();
  const lines = [
    "| machine | tokens | routing | rows | measured ms | predicted ms | error | remote MB/GPU |",
    "|---|---:|---|---|---:|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${r.topology} | ${r.tokens} | ${r.scenario} | ${r.e4m3 ? "e4m3" : "bf16"} | ${
        r.ms.toFixed(3)
      } | ${r.predicted.toFixed(3)} | ${r.errorPct >= 0 ? "+" : ""}${r.errorPct.toFixed(1)}% | ${
        r.remoteMB.toFixed(1)
      } |`
    ),
  ];
  const abs = rows.map((r) => Math.abs(r.errorPct));
  lines.push(
    "",
    `mean |error| ${(abs.reduce((a, b) => a + b, 0) / abs.length).toFixed(1)}%, worst ${
      Math.max(...abs).toFixed(1)
    }%, within 15%: ${abs.filter((e) => e <= 15).length} of ${abs.length}`,
  );
  return lines.join("\n") + "\n";
}

function fuscoText(rows: ReturnType<typeof fuscoTable>): string {
  const lines = [
    "| scenario (our stand-in) | tokens | NCCL | DeepEP | FUSCO | weft model: none | node, rail | node, greedy | node, uniform routing | NIC MB/GPU | GB/s FUSCO implies |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${r.scenario} (${r.routing}) | ${r.tokens} | ${r.nccl} | ${r.deepep} | ${r.fusco} | ${
        r.none.toFixed(1)
      } | ${r.nodeRail.toFixed(1)} | ${r.nodeGreedy.toFixed(1)} | ${r.uniformNode.toFixed(1)} | ${
        r.nicMB.toFixed(0)
      } | ${r.impliedNicGBs.toFixed(1)} |`
    ),
  ];
  return lines.join("\n") + "\n";
}

if (import.meta.main) {
  try {
    console.log(await main(Deno.args));
  } catch (e) {
    if (e instanceof WeftError) {
      console.error(e.message);
      Deno.exit(2);
    }
    throw e;
  }
}
