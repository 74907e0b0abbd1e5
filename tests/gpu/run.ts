/**
 * `deno task test:gpu`: the GPU engine against the CPU Simulator in several
 * worlds, plus worlds where one rank dies mid-run. Prints one line per case
 * and ends with `N passed, M failed`; exits non-zero on any failure. Without
 * a GPU it prints `SKIPPED: no GPU present (<reason>)` and exits 0.
 *
 * Worlds (`--worlds`, syntax in worlds.ts: `GPUS[xRANKS_PER_GPU][nNODES]`;
 * default `2,4,8,2n2,4n2,1x4n2,1x4n4`):
 *   - one node (`2`, `4`, `8`): the cases of cases.ts and cases_precision.ts;
 *   - several nodes, real GPUs (`2n2`: 2 GPUs as 2 emulated nodes × 1;
 *     `4n2`: 4 GPUs as 2 nodes × 2; distinct NCCL_HOSTID per node) or ranks
 *     sharing GPUs (`1x4n2`: 4 ranks on GPU 0 as 2 nodes × 2; `1x4n4`: 4
 *     nodes × 1): the cases of cases_nodes.ts
 *     (the hierarchical engine), then, unless `--no-dead-peer`, the last
 *     rank (on the last node) exits and every survivor must fail within 30 s.
 * A world needing more GPUs than there are is skipped with a `SKIP` line.
 * Times printed for multi-node or shared-GPU worlds are not performance
 * figures (ranks share a GPU; emulated nodes talk NCCL over sockets).
 *
 * Options:
 *   --worlds LIST    run exactly these worlds (e.g. `--worlds 1x4n2,1x4n4`)
 *   --nodes-only     only the multi-node worlds of the list
 *   --no-nodes       only the one-node worlds of the list
 *   --no-dead-peer   skip the dead-peer runs
 *   --case NAME      only the cases whose name contains NAME
 *   --nccl-debug     also run the first multi-node world's first case with
 *                    NCCL_DEBUG=INFO and print NCCL's lines with "NET/Socket"
 *                    or "via NET" (bytes crossing NCCL's network transport
 *                    between emulated nodes); none is a failure
 *
 * @module
 */
import { launch } from "../../lib/dist/launch.ts";
import { deviceCount } from "../../lib/native/device.ts";
import { libraryPath } from "../../lib/native/loader.ts";
import { WeftError } from "../../dsl/errors.ts";
import { DEFAULT_WORLDS, parseWorlds, timingCaveat, type World } from "./worlds.ts";

const worker = new URL("./worker.ts", import.meta.url).pathname;
const args = Deno.args;
const worldsArg = valueOf("--worlds");
const caseFilter = valueOf("--case");
const wantDeadPeer = !args.includes("--no-dead-peer");
const ncclDebug = args.includes("--nccl-debug");

function valueOf(flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

let selected: World[];
try {
  selected = parseWorlds(worldsArg ?? DEFAULT_WORLDS).filter((w) =>
    !(args.includes("--nodes-only") && w.nodes === 1) &&
    !(args.includes("--no-nodes") && w.nodes > 1)
  );
} catch (error) {
  console.log(`FAIL: ${error instanceof WeftError ? error.message : String(error)}`);
  Deno.exit(2);
}

/** A GPU the kernel driver exposes, whether or not weft can use it. */
function gpuVisible(): boolean {
  try {
    return Deno.statSync("/dev/nvidia0").isCharDevice ?? true;
  } catch {
    return false;
  }
}

function probe(): number | string {
  try {
    return deviceCount();
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    if (!gpuVisible()) return reason;
    // A GPU is there but weft cannot use it: that is a failure, not a skip.
    console.log(`FAIL: a GPU is present but weft cannot use it: ${reason}`);
    console.log("0 passed, 1 failed");
    Deno.exit(1);
  }
}

const devices = probe();
if (typeof devices === "string") {
  const lib = libraryPath();
  console.log(
    `SKIPPED: no GPU present (${devices.includes(lib) ? devices : `${devices}; library ${lib}`})`,
  );
  Deno.exit(0);
}

const worlds = selected.filter((w) => {
  if (w.gpus <= devices) return true;
  console.log(
    `SKIP ${w.label} [${w.spec}]: needs ${w.gpus} GPU${
      w.gpus > 1 ? "s" : ""
    }, this machine has ${devices}`,
  );
  return false;
});
if (worlds.length === 0) {
  console.log(
    `SKIPPED: no world fits (only ${devices} GPU${devices === 1 ? "" : "s"}; asked for ${
      selected.map((w) => w.spec).join(",") || "none"
    })`,
  );
  Deno.exit(0);
}

let passed = 0;
let failed = 0;
const report = (ok: boolean, line: string): void => {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "PASS" : "FAIL"} ${line}`);
};

interface Run {
  readonly code: number;
  readonly message?: string;
  readonly lines: readonly { rank: number; text: string }[];
  /** NCCL_DEBUG lines about the network transport (only with `ncclNet`). */
  readonly net: readonly string[];
}

async function runWorld(
  world: World,
  workerArgs: readonly string[],
  ncclNet = false,
): Promise<Run> {
  const lines: { rank: number; text: string }[] = [];
  const net: string[] = [];
  // NCCL writes its debug lines to stdout unsynchronized with ours, so a
  // rank's CASE line could land mid-line; send them to a file per process.
  const ncclDir = ncclNet ? await Deno.makeTempDir({ prefix: "weft-nccl-" }) : "";
  const result = await launch({
    script: worker,
    args: [...workerArgs],
    gpus: world.gpus,
    ...(world.ranksPerGpu > 1 ? { ranksPerGpu: world.ranksPerGpu } : {}),
    ...(world.nodes > 1 ? { emulateNodes: world.nodes } : {}),
    ...(ncclNet
      ? {
        env: {
          NCCL_DEBUG: "INFO",
          NCCL_DEBUG_SUBSYS: "INIT,NET",
          NCCL_DEBUG_FILE: `${ncclDir}/nccl.%p.log`,
        },
      }
      : {}),
    timeoutMs: 9 * 60_000,
    graceMs: 3000,
    output: (stream, text) => {
      const m = /^\[rank (\d+)\] (.*)$/s.exec(text.replace(/\n$/, ""));
      if (m !== null) lines.push({ rank: Number(m[1]), text: m[2] });
      if (ncclNet && /NCCL INFO/.test(text)) return;
      // Everything but case lines goes through, for diagnosis on the GPU machine.
      if (m === null || !/^(CASE|DEADPEER) /.test(m[2])) {
        (stream === "stdout" ? console.log : console.error)(`  ${world.label} ${text.trimEnd()}`);
      }
    },
  });
  if (ncclNet) {
    for await (const f of Deno.readDir(ncclDir)) {
      const text = await Deno.readTextFile(`${ncclDir}/${f.name}`);
      for (const l of text.split("\n")) if (/NET\/Socket|via NET/.test(l)) net.push(l.trimEnd());
    }
    await Deno.remove(ncclDir, { recursive: true });
  }
  return {
    code: result.code,
    ...(result.message !== undefined ? { message: result.message } : {}),
    lines,
    net,
  };
}

/** Aggregates CASE lines: a case passes when every rank says PASS. */
function judgeCases(label: string, worldRanks: number, run: Run): void {
  const byCase = new Map<string, Map<number, string>>();
  for (const { rank, text } of run.lines) {
    const m = /^CASE (\S+) (.*)$/.exec(text);
    if (m === null) continue;
    if (!byCase.has(m[1])) byCase.set(m[1], new Map());
    byCase.get(m[1])!.set(rank, m[2]);
  }
  for (const [name, ranks] of byCase) {
    const missing = Array.from({ length: worldRanks }, (_, r) => r).filter((r) => !ranks.has(r));
    const fails = [...ranks].filter(([, s]) => !s.startsWith("PASS"));
    const maxErr = Math.max(
      0,
      ...[...ranks.values()].map((s) => Number(/maxErr=(\S+)/.exec(s)?.[1] ?? 0)),
    );
    const ok = missing.length === 0 && fails.length === 0;
    const why = [
      ...fails.map(([r, s]) => `rank ${r}: ${s}`),
      ...(missing.length > 0
        ? [`no result from rank${missing.length > 1 ? "s" : ""} ${missing.join(", ")}`]
        : []),
    ].join("; ");
    report(ok, `${label} ${name} maxErr=${maxErr.toExponential(2)}${ok ? "" : ` — ${why}`}`);
  }
  if (run.code !== 0) report(false, `${label} launcher: ${run.message ?? `exit ${run.code}`}`);
  if (byCase.size === 0 && run.code === 0) report(false, `${label}: no case reported`);
}

/**
 * The dead-peer run of `world`: the last rank exits after a good round;
 * every other rank (on its node and on the others) must fail with a
 * WeftError naming the peer within 30 s, and the launcher must report it.
 */
function judgeDeadPeer(world: World, run: Run): void {
  const survivors = Array.from({ length: world.ranks - 1 }, (_, r) => r);
  const problems: string[] = [];
  let slowest = 0;
  for (const r of survivors) {
    const line = run.lines.find((l) => l.rank === r && l.text.startsWith("DEADPEER"));
    const m = line === undefined ? null : /^DEADPEER (\S+) elapsedMs=(\d+) (.*)$/.exec(line.text);
    if (m === null || m[1] !== "ERROR" || Number(m[2]) >= 30_000) {
      problems.push(`rank ${r} said ${line?.text ?? "nothing"}`);
    } else slowest = Math.max(slowest, Number(m[2]));
  }
  const named = survivors.some((r) => new RegExp(`rank ${r}\\b`).test(run.message ?? ""));
  if (run.code === 0 || !named) problems.push(`launcher: ${run.message ?? `exit ${run.code}`}`);
  const ok = problems.length === 0;
  report(
    ok,
    `${world.label} dead-peer-fails-others-within-30s${
      ok ? ` (slowest ${slowest} ms${timingCaveat(world)})` : ` — ${problems.join("; ")}`
    }`,
  );
}

const casesArgs = ["cases", ...(caseFilter !== undefined ? [caseFilter] : [])];
for (const world of worlds) {
  judgeCases(world.label, world.ranks, await runWorld(world, casesArgs));
  if (wantDeadPeer && world.nodes > 1) judgeDeadPeer(world, await runWorld(world, ["dead-peer"]));
}

// The one-node dead peer, as always: 2 GPUs, rank 1 exits.
if (wantDeadPeer && devices >= 2 && worlds.some((w) => w.nodes === 1)) {
  judgeDeadPeer(parseWorlds("2")[0], await runWorld(parseWorlds("2")[0], ["dead-peer"]));
}

const netWorld = worlds.find((w) => w.nodes > 1);
if (ncclDebug && netWorld === undefined) {
  console.log("SKIP --nccl-debug: no multi-node world selected");
} else if (ncclDebug && netWorld !== undefined) {
  const run = await runWorld(netWorld, ["cases", caseFilter ?? "node-bf16"], true);
  judgeCases(`${netWorld.label} NCCL_DEBUG=INFO`, netWorld.ranks, run);
  const unique = [...new Set(run.net.map((l) => l.replace(/^\S+ /, "")))];
  for (const l of run.net.slice(0, 40)) console.log(`  ${netWorld.label} ${l}`);
  if (run.net.length > 40) console.log(`  … ${run.net.length - 40} more`);
  report(
    run.code === 0 && run.net.length > 0,
    `${netWorld.label} nccl-debug: ${run.net.length} NCCL line(s) with NET/Socket or via NET (${unique.length} distinct)${
      run.code === 0 ? "" : ` — launcher: ${run.message ?? `exit ${run.code}`}`
    }`,
  );
}

console.log(`${passed} passed, ${failed} failed`);
Deno.exit(failed > 0 ? 1 : 0);
