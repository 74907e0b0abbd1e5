/**
 * The launcher never leaves a process behind: ranks die with it (even by
 * SIGKILL), their subprocesses stop with them, SIGTERM exits 143. Also the
 * launcher's store: a per-job secret and the bind address.
 */
import assert from "node:assert/strict";
import { launch } from "../lib/dist/launch.ts";
import { eventually } from "./fixtures/store_raw.ts";

const fixture = (name: string): string => new URL(`./fixtures/${name}`, import.meta.url).pathname;
const cli = new URL("../lib/dist/launch.ts", import.meta.url).pathname;

/** Alive and not a zombie (a dead child of a dead launcher may wait unreaped). */
function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

interface Spawned {
  readonly rank: number;
  readonly pid: number;
  readonly child: number;
}

/** Starts the CLI with `launch_sleep.ts` on `gpus` ranks; resolves once every rank reported. */
async function startCli(gpus: number): Promise<{ proc: Deno.ChildProcess; ranks: Spawned[] }> {
  const proc = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      cli,
      "--gpus",
      String(gpus),
      "--grace",
      "1",
      fixture("launch_sleep.ts"),
    ],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const ranks: Spawned[] = [];
  const reader = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  for (let i = 0; i < 1000 && ranks.length < gpus; i++) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
    let nl: number;
    while ((nl = text.indexOf("\n")) >= 0) {
      const m = /^\[rank \d+\] (\{.*\})$/.exec(text.slice(0, nl));
      if (m) ranks.push(JSON.parse(m[1]));
      text = text.slice(nl + 1);
    }
  }
  reader.releaseLock();
  proc.stdout.cancel().catch(() => {});
  assert.equal(ranks.length, gpus, "every rank reported its pids");
  return { proc, ranks };
}

/** Kills what is left of what this test started, so a failure does not leak processes. */
function cleanUp(ranks: readonly Spawned[]): void {
  for (const r of ranks) {
    for (const pid of [r.child, r.pid]) {
      if (!alive(pid)) continue;
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* gone */ }
    }
  }
}

Deno.test("supervise: kill -9 of the launcher does not orphan ranks or their subprocesses", async () => {
  const { proc, ranks } = await startCli(2);
  try {
    for (const r of ranks) assert(alive(r.pid) && alive(r.child));
    proc.kill("SIGKILL");
    await proc.status;
    const gone = await eventually(() => ranks.every((r) => !alive(r.pid) && !alive(r.child)), 5000);
    assert(
      gone,
      `still alive: ${JSON.stringify(ranks.filter((r) => alive(r.pid) || alive(r.child)))}`,
    );
  } finally {
    cleanUp(ranks);
  }
});

Deno.test("supervise: SIGTERM stops every rank and its subprocesses, and exits 143", async () => {
  const { proc, ranks } = await startCli(2);
  try {
    proc.kill("SIGTERM");
    const status = await proc.status;
    assert.equal(status.code, 143);
    assert(await eventually(() => ranks.every((r) => !alive(r.pid) && !alive(r.child)), 3000));
  } finally {
    cleanUp(ranks);
  }
});

Deno.test("supervise: when a rank fails, the others' subprocesses stop with them", async () => {
  const lines: string[] = [];
  const result = await launch({
    script: fixture("launch_sleep.ts"),
    args: ["1"],
    gpus: 3,
    graceMs: 1000,
    output: (stream, text) => stream === "stdout" && lines.push(text),
  });
  const ranks: Spawned[] = lines.map((l) => JSON.parse(l.replace(/^\[rank \d+\] /, "")));
  try {
    assert.equal(result.code, 5);
    assert.equal(result.failedRank, 1);
    assert.equal(ranks.length, 3);
    // launch() has killed every rank's group before it returns; the kernel may
    // take a moment to finish them.
    for (const r of ranks) {
      assert(await eventually(() => !alive(r.child), 2000), `rank ${r.rank}'s subprocess survived`);
    }
  } finally {
    cleanUp(ranks);
  }
});

Deno.test("launcher store: ranks get a per-job secret; a wrong one is refused", async () => {
  const lines: string[] = [];
  const run = () =>
    launch({
      script: fixture("launch_auth.ts"),
      gpus: 2,
      output: (_stream, text) => lines.push(text),
    });
  const first = await run();
  assert.equal(first.code, 0, lines.join(""));
  const a = lines.filter((l) => l.includes('"secret"')).map((l) =>
    JSON.parse(l.replace(/^\[rank \d+\] /, ""))
  );
  assert.equal(a.length, 2);
  assert.match(a[0].secret, /^[0-9a-f]{32}$/);
  assert.equal(a[0].secret, a[1].secret, "one secret per job");
  for (const r of a) assert.equal(r.wrong, "refused");
  lines.length = 0;
  await run();
  const b = lines.filter((l) => l.includes('"secret"')).map((l) =>
    JSON.parse(l.replace(/^\[rank \d+\] /, ""))
  );
  assert.notEqual(b[0].secret, a[0].secret, "a fresh secret per job");
});

Deno.test("launcher store: node 0 binds --master's address, not every interface", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.2", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const lines: string[] = [];
  const result = await launch({
    script: fixture("launch_auth.ts"),
    args: [String(port)],
    gpus: 1,
    master: `127.0.0.2:${port}`,
    secret: "bind-test-secret-0123456789",
    output: (_stream, text) => lines.push(text),
  });
  assert.equal(result.code, 0, lines.join(""));
  const report = JSON.parse(
    lines.find((l) => l.includes('"secret"'))!.replace(/^\[rank \d+\] /, ""),
  );
  assert.equal(report.store, `127.0.0.2:${port}`);
  assert.equal(report.secret, "bind-test-secret-0123456789");
  assert.equal(report.loopback, "refused", "the store also listened on 127.0.0.1");
});

Deno.test("supervise: a closed stdout (`| head`) does not stop the launcher", async () => {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", cli, "--gpus", "2", fixture("launch_env.ts")],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  await proc.stdout.cancel(); // the reader went away before any rank printed
  const [status, stderr] = await Promise.all([proc.status, new Response(proc.stderr).text()]);
  assert.equal(status.code, 0, stderr);
});
