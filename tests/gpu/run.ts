/**
 * `deno task test:gpu`: the GPU engine against the CPU Simulator, in worlds
 * of 2, 4 and 8 processes (those there are GPUs for), plus a world where one
 * rank dies mid-run. Prints one line per case and ends with `N passed, M
 * failed`; exits non-zero on any failure. Without a GPU it prints
 * `SKIPPED: no GPU present (<reason>)` and exits 0.
 *
 * With 4 GPUs it also runs 4 ranks as 2 emulated nodes (distinct
 * NCCL_HOSTID), for the multi-node paths and dedupe `node`.
 *
 * Options: `--worlds 2,4,8` (which world sizes), `--no-nodes`, `--no-dead-peer`.
 *
 * @module
 */
import { launch } from "../../lib/dist/launch.ts";
import { deviceCount } from "../../lib/native/device.ts";
import { libraryPath } from "../../lib/native/loader.ts";

const worker = new URL("./worker.ts", import.meta.url).pathname;
const args = Deno.args;
const worldsArg = valueOf("--worlds");
const wantNodes = !args.includes("--no-nodes");
const wantDeadPeer = !args.includes("--no-dead-peer");

function valueOf(flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
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

const worlds = (worldsArg?.split(",").map(Number) ?? [2, 4, 8]).filter((w) =>
  w >= 1 && w <= devices
);
if (worlds.length === 0) {
  console.log(
    `SKIPPED: no GPU present (only ${devices} GPU${devices === 1 ? "" : "s"}; the tests need 2)`,
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
}

async function runWorld(
  label: string,
  gpus: number,
  mode: string,
  emulateNodes?: number,
): Promise<Run> {
  const lines: { rank: number; text: string }[] = [];
  const result = await launch({
    script: worker,
    args: [mode],
    gpus,
    ...(emulateNodes !== undefined ? { emulateNodes } : {}),
    timeoutMs: 9 * 60_000,
    graceMs: 3000,
    output: (stream, text) => {
      const m = /^\[rank (\d+)\] (.*)$/s.exec(text.replace(/\n$/, ""));
      if (m !== null) lines.push({ rank: Number(m[1]), text: m[2] });
      // Everything but case lines goes through, for diagnosis on the GPU machine.
      if (m === null || !/^(CASE|DEADPEER) /.test(m[2])) {
        (stream === "stdout" ? console.log : console.error)(`  ${label} ${text.trimEnd()}`);
      }
    },
  });
  return {
    code: result.code,
    ...(result.message !== undefined ? { message: result.message } : {}),
    lines,
  };
}

/** Aggregates CASE lines: a case passes when every rank says PASS. */
function judgeCases(label: string, gpus: number, run: Run): void {
  const byCase = new Map<string, Map<number, string>>();
  for (const { rank, text } of run.lines) {
    const m = /^CASE (\S+) (.*)$/.exec(text);
    if (m === null) continue;
    if (!byCase.has(m[1])) byCase.set(m[1], new Map());
    byCase.get(m[1])!.set(rank, m[2]);
  }
  for (const [name, ranks] of byCase) {
    const missing = Array.from({ length: gpus }, (_, r) => r).filter((r) => !ranks.has(r));
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

for (const world of worlds) {
  const label = `world=${world}`;
  judgeCases(label, world, await runWorld(label, world, "cases"));
}
if (wantNodes && devices >= 4 && (worldsArg === undefined || worlds.includes(4))) {
  const label = "world=4(2 nodes)";
  judgeCases(label, 4, await runWorld(label, 4, "cases", 2));
}

if (wantDeadPeer && devices >= 2) {
  const label = "world=2";
  const run = await runWorld(label, 2, "dead-peer");
  const survivor = run.lines.find((l) => l.rank === 0 && l.text.startsWith("DEADPEER"));
  const m = survivor === undefined
    ? null
    : /^DEADPEER (\S+) elapsedMs=(\d+) (.*)$/.exec(survivor.text);
  const ok = m !== null && m[1] === "ERROR" && Number(m[2]) < 30_000 && run.code !== 0 &&
    /rank 0/.test(run.message ?? "");
  report(
    ok,
    `${label} dead-peer-fails-others-within-30s${
      ok
        ? ` (${m![2]} ms)`
        : ` — survivor said ${survivor?.text ?? "nothing"}; launcher: ${
          run.message ?? `exit ${run.code}`
        }`
    }`,
  );
}

console.log(`${passed} passed, ${failed} failed`);
Deno.exit(failed > 0 ? 1 : 0);
