/**
 * Process supervision for the launcher: hosts the store (node 0), starts one
 * `deno run` per local rank, prefixes their output, stops them all on the
 * first failure, a timeout or an abort, and never leaves a process behind.
 *
 * Each rank runs in its own process group (so stopping a rank stops the
 * subprocesses it started) with the watchdog preloaded (so a rank exits when
 * its launcher dies, even by SIGKILL; see `watchdog.ts`).
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { ENV, parseAddress, storeSecretFromEnv } from "./env.ts";
import {
  type LaunchOptions,
  type LaunchResult,
  placeRanks,
  randomHex,
  type RankExit,
  type RankPlacement,
  resolveSecret,
  storeBindHost,
  validateLaunch,
} from "./launch_plan.ts";
import { DEFAULT_STORE_LIMITS, StoreServer } from "./store.ts";

/** Exit code for an abort with reason "SIGTERM" (128 + 15), as the CLI gets on SIGTERM. */
export const SIGTERM_EXIT_CODE = 143;
/** Exit code for any other abort (128 + SIGINT), as the CLI gets on Ctrl-C. */
export const INTERRUPT_EXIT_CODE = 130;

const WATCHDOG = new URL("./watchdog_preload.ts", import.meta.url).href;

/**
 * Starts one `deno run` per local rank and waits for all of them. On the
 * first failure it stops the rest and reports that rank.
 *
 * @example
 * ```ts ignore
 * import { launch } from "./launch.ts";
 * const result = await launch({ script: "tests/gpu/worker.ts", gpus: 4 });
 * if (result.code !== 0) console.error(result.message);
 * ```
 */
export async function launch(options: LaunchOptions): Promise<LaunchResult> {
  const started = Date.now();
  const { nnodes, nodeRank } = validateLaunch(options);
  const out = options.output ?? writeToConsole;
  const graceMs = options.graceMs ?? 5000;
  const master = options.master;
  if (nnodes > 1 && master === undefined) {
    throw new WeftError({
      field: "--master",
      problem: "is required with --nnodes > 1",
      fix: "pass --master host:port with the address of node 0 to every node's launcher",
    });
  }
  const bindHost = storeBindHost(options); // also checks --master
  const secret = resolveSecret(options.secret ?? storeSecretFromEnv(), nnodes);
  const jobId = options.jobId ?? randomHex(4);
  const port = master === undefined ? 0 : parseAddress(master)!.port;

  const server = nodeRank === 0
    ? StoreServer.listen({
      hostname: bindHost,
      port,
      secret,
      maxWaitMs: Math.max(
        1,
        Math.ceil(options.timeoutMs ?? DEFAULT_STORE_LIMITS.maxWaitMs),
      ),
    })
    : undefined;
  try {
    const store = master ?? server!.address;
    if (nnodes > 1 && server !== undefined) {
      out("stderr", `weft launch: store listening for ${nnodes} nodes at ${store}\n`);
    }
    const placements = placeRanks({ ...options, jobId }, store);
    return await runRanks(options, placements, secret, out, graceMs, started);
  } finally {
    // Frees every key: the job is over.
    await server?.close();
  }
}

interface Failure {
  readonly rank?: number;
  readonly message: string;
  readonly code: number;
}

async function runRanks(
  options: LaunchOptions,
  placements: readonly RankPlacement[],
  secret: string,
  out: (stream: "stdout" | "stderr", text: string) => void,
  graceMs: number,
  started: number,
): Promise<LaunchResult> {
  const flags = options.denoFlags ?? ["--allow-all"];
  const children = placements.map((p) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", ...flags, "--preload", WATCHDOG, options.script, ...(options.args ?? [])],
      env: { ...options.env, ...p.env, [ENV.secret]: secret },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      // Its own process group: signals to the group reach the rank's subprocesses too.
      detached: true,
    }).spawn()
  );
  const running = new Set(children.map((_, i) => i));
  let failure: Failure | undefined;
  let killTimer: ReturnType<typeof setTimeout> | undefined;

  const stopAll = (): void => {
    for (const i of running) signalGroup(children[i], "SIGTERM");
    killTimer ??= setTimeout(() => {
      for (const i of running) signalGroup(children[i], "SIGKILL");
    }, graceMs);
  };
  const fail = (f: Failure): void => {
    if (failure !== undefined) return;
    failure = f;
    out(
      "stderr",
      `weft launch: ${f.message}${running.size > 0 ? "; stopping the other ranks" : ""}\n`,
    );
    stopAll();
  };

  const timeout = options.timeoutMs === undefined ? undefined : setTimeout(() => {
    fail({ message: `timed out after ${options.timeoutMs} ms`, code: 124 });
  }, options.timeoutMs);
  const onAbort = (): void =>
    options.signal?.reason === "SIGTERM"
      ? fail({ message: "terminated by SIGTERM", code: SIGTERM_EXIT_CODE })
      : fail({ message: "interrupted", code: INTERRUPT_EXIT_CODE });
  if (options.signal?.aborted) onAbort();
  options.signal?.addEventListener("abort", onAbort);

  const exits: RankExit[] = new Array(children.length);
  const pumps = children.flatMap((child, i) => {
    const prefix = `[rank ${placements[i].rank}] `;
    return [
      pumpLines(child.stdout, (line) => out("stdout", prefix + line)),
      pumpLines(child.stderr, (line) => out("stderr", prefix + line)),
    ];
  });
  const waits = children.map(async (child, i) => {
    const status = await child.status;
    running.delete(i);
    const rank = placements[i].rank;
    exits[i] = { rank, code: status.code, signal: status.signal };
    if (!status.success) {
      const how = status.signal !== null
        ? `was killed by ${status.signal}`
        : `exited with code ${status.code}`;
      fail({ rank, message: `rank ${rank} ${how}`, code: status.code !== 0 ? status.code : 1 });
    }
  });
  try {
    await Promise.all(waits);
    // Whatever a rank left running in its group goes with the job (and would
    // otherwise hold the output pipes open forever).
    for (const child of children) signalGroup(child, "SIGKILL");
    await Promise.all(pumps);
  } finally {
    clearTimeout(killTimer);
    clearTimeout(timeout);
    options.signal?.removeEventListener("abort", onAbort);
  }
  const elapsedMs = Date.now() - started;
  if (failure === undefined) return { code: 0, exits, elapsedMs };
  return {
    code: failure.code,
    ...(failure.rank !== undefined ? { failedRank: failure.rank } : {}),
    message: failure.message,
    exits,
    elapsedMs,
  };
}

/** Signals a rank's whole process group, falling back to the rank alone. */
function signalGroup(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    Deno.kill(-child.pid, signal);
    return;
  } catch {
    // The group is gone (or never formed): fall through to the process itself.
  }
  try {
    child.kill(signal);
  } catch {
    // It exited between the check and the kill.
  }
}

/** Calls `line` for every newline-terminated line; a last partial line gets a newline. */
async function pumpLines(
  stream: ReadableStream<Uint8Array>,
  line: (text: string) => void,
): Promise<void> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      line(rest.slice(0, nl + 1));
      rest = rest.slice(nl + 1);
    }
  }
  if (rest !== "") line(rest + "\n");
}

const encoder = new TextEncoder();

function writeToConsole(stream: "stdout" | "stderr", text: string): void {
  const target = stream === "stdout" ? Deno.stdout : Deno.stderr;
  const bytes = encoder.encode(text);
  try {
    let off = 0;
    while (off < bytes.length) off += target.writeSync(bytes.subarray(off));
  } catch {
    // A closed terminal or pipe (`| head`) must not stop the supervision of the ranks.
  }
}
