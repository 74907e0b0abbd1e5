import assert from "node:assert/strict";
import {
  launch,
  type LaunchOptions,
  type LaunchResult,
  parseLaunchArgs,
  placeRanks,
} from "../lib/dist/launch.ts";
import { WeftError } from "../dsl/errors.ts";

const fixture = (name: string): string => new URL(`./fixtures/${name}`, import.meta.url).pathname;

interface Captured {
  result: LaunchResult;
  stdout: string[];
  stderr: string[];
}

async function run(options: Omit<LaunchOptions, "output">): Promise<Captured> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const result = await launch({
    ...options,
    output: (stream, text) => (stream === "stdout" ? stdout : stderr).push(text),
  });
  return { result, stdout, stderr };
}

Deno.test("launch: every rank gets its variables, args and the parent's environment", async () => {
  Deno.env.set("NCCL_NVLS_ENABLE", "0");
  try {
    const { result, stdout, stderr } = await run({
      script: fixture("launch_env.ts"),
      args: ["a", "b c"],
      gpus: 3,
    });
    assert.equal(result.code, 0, stderr.join(""));
    assert.deepEqual(result.exits.map((e) => e.code), [0, 0, 0]);
    const seen = stdout.map((line) => {
      const m = /^\[rank (\d+)\] (\{.*\})\n$/.exec(line);
      assert(m, `unprefixed line ${JSON.stringify(line)}`);
      const parsed = JSON.parse(m[2]);
      assert.equal(parsed.env.RANK, m[1]);
      return parsed;
    }).sort((x, y) => Number(x.env.RANK) - Number(y.env.RANK));
    assert.equal(seen.length, 3);
    const store = seen[0].env.WEFT_STORE;
    assert.match(store, /^127\.0\.0\.1:\d+$/);
    seen.forEach((s, r) => {
      assert.deepEqual(s.args, ["a", "b c"]);
      assert.deepEqual(s.env, {
        RANK: String(r),
        WORLD_SIZE: "3",
        LOCAL_RANK: String(r),
        LOCAL_WORLD_SIZE: "3",
        NODE_RANK: "0",
        WEFT_DEVICE: String(r),
        WEFT_STORE: store,
        NCCL_HOSTID: null,
        NCCL_NVLS_ENABLE: "0",
      });
    });
  } finally {
    Deno.env.delete("NCCL_NVLS_ENABLE");
  }
});

Deno.test("launch: stderr lines are prefixed and a last partial line is completed", async () => {
  const { result, stderr } = await run({ script: fixture("launch_env.ts"), gpus: 2 });
  assert.equal(result.code, 0);
  for (const r of [0, 1]) {
    assert(stderr.includes(`[rank ${r}] two\n`));
    assert(stderr.includes(`[rank ${r}] lines, no newline\n`));
  }
});

Deno.test("launch: emulated nodes get distinct NCCL_HOSTID and NODE_RANK, devices stay distinct", async () => {
  const { result, stdout } = await run({
    script: fixture("launch_env.ts"),
    gpus: 4,
    emulateNodes: 2,
    jobId: "t1",
  });
  assert.equal(result.code, 0);
  const envs = stdout.map((l) => JSON.parse(l.replace(/^\[rank \d+\] /, "")).env)
    .sort((a, b) => Number(a.RANK) - Number(b.RANK));
  assert.deepEqual(
    envs.map((
      e,
    ) => [e.RANK, e.NODE_RANK, e.LOCAL_RANK, e.LOCAL_WORLD_SIZE, e.WEFT_DEVICE, e.NCCL_HOSTID]),
    [
      ["0", "0", "0", "2", "0", "weft-t1-node-0"],
      ["1", "0", "1", "2", "1", "weft-t1-node-0"],
      ["2", "1", "0", "2", "2", "weft-t1-node-1"],
      ["3", "1", "1", "2", "3", "weft-t1-node-1"],
    ],
  );
});

Deno.test("launch: the first failing rank stops the others and is named with its exit code", async () => {
  const start = Date.now();
  const { result, stderr } = await run({
    script: fixture("launch_fail.ts"),
    args: ["2", "3"],
    gpus: 4,
  });
  const elapsed = Date.now() - start;
  assert.equal(result.code, 3);
  assert.equal(result.failedRank, 2);
  assert.equal(result.message, "rank 2 exited with code 3");
  assert(
    stderr.some((l) =>
      l.startsWith("weft launch: rank 2 exited with code 3; stopping the other ranks")
    ),
  );
  assert(stderr.includes("[rank 2] failing on purpose\n"));
  // The others were sleeping for a minute: they must have been stopped, by SIGTERM.
  assert(elapsed < 20_000, `took ${elapsed} ms`);
  for (const e of result.exits.filter((e) => e.rank !== 2)) assert.equal(e.signal, "SIGTERM");
});

Deno.test("launch: a rank that ignores SIGTERM is killed after the grace period", async () => {
  const ready = `${Deno.makeTempDirSync()}/ready`;
  const { result, stdout } = await run({
    script: fixture("launch_fail.ts"),
    // Rank 0 fails once rank 1 has installed its SIGTERM listener.
    args: ["0", "1", "0", "stubborn", ready],
    gpus: 2,
    graceMs: 500,
  });
  assert.equal(result.code, 1);
  assert.equal(result.failedRank, 0);
  assert(stdout.includes("[rank 1] ignoring SIGTERM\n"));
  assert.equal(result.exits[1].signal, "SIGKILL");
});

Deno.test("launch: aborting (Ctrl-C in the CLI) stops every rank", async () => {
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 1500);
  const { result } = await run({
    script: fixture("launch_fail.ts"),
    args: ["-1", "0"],
    gpus: 2,
    signal: controller.signal,
  });
  assert.equal(result.code, 130);
  assert.equal(result.message, "interrupted");
  assert.equal(result.failedRank, undefined);
});

Deno.test("launch: the timeout stops a world that hangs", async () => {
  const { result } = await run({
    script: fixture("launch_fail.ts"),
    args: ["-1", "0"],
    gpus: 2,
    timeoutMs: 1500,
  });
  assert.equal(result.code, 124);
  assert.match(result.message ?? "", /timed out/);
});

Deno.test("launch: ranks rendezvous through the store the launcher hosts", async () => {
  const { result, stdout } = await run({ script: fixture("launch_store.ts"), gpus: 3 });
  assert.equal(result.code, 0);
  assert.equal(stdout.filter((l) => l.endsWith("gathered 0,1,2\n")).length, 3);
});

Deno.test("launch: two node launchers share node 0's store through --master", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const master = `127.0.0.1:${(probe.addr as Deno.NetAddr).port}`;
  probe.close();
  const secret = "0123456789abcdef0123";
  // Node 1 starts first: its ranks must wait for node 0's store to come up.
  const node1 = run({
    script: fixture("launch_store.ts"),
    gpus: 2,
    nnodes: 2,
    nodeRank: 1,
    master,
    secret,
  });
  await new Promise((r) => setTimeout(r, 300));
  const node0 = run({
    script: fixture("launch_store.ts"),
    gpus: 2,
    nnodes: 2,
    nodeRank: 0,
    master,
    secret,
  });
  const [a, b] = await Promise.all([node0, node1]);
  assert.equal(a.result.code, 0, a.stderr.join(""));
  assert.equal(b.result.code, 0, b.stderr.join(""));
  assert.deepEqual(a.stdout.map((l) => l.slice(0, 8)).sort(), ["[rank 0]", "[rank 1]"]);
  assert.deepEqual(b.stdout.map((l) => l.slice(0, 8)).sort(), ["[rank 2]", "[rank 3]"]);
  for (const l of [...a.stdout, ...b.stdout]) assert.match(l, /gathered 0,1,2,3\n$/);
});

Deno.test("launch: arguments parse up to the script and bad ones are WeftErrors", () => {
  assert.deepEqual(
    parseLaunchArgs(["--gpus=4", "--emulate-nodes", "2", "--grace", "1.5", "s.ts", "--x"]),
    {
      script: "s.ts",
      args: ["--x"],
      gpus: 4,
      emulateNodes: 2,
      graceMs: 1500,
    },
  );
  assert.throws(() => parseLaunchArgs(["s.ts"]), WeftError);
  assert.throws(() => parseLaunchArgs(["--gpus", "2"]), WeftError);
  assert.throws(() => parseLaunchArgs(["--gpu", "2", "s.ts"]), WeftError);
  assert.throws(() => placeRanks({ gpus: 3, emulateNodes: 2 }, "h:1"), WeftError);
  assert.throws(() => placeRanks({ gpus: 2, nnodes: 2, nodeRank: 2 }, "h:1"), WeftError);
  const node1 = placeRanks({ gpus: 2, nnodes: 2, nodeRank: 1 }, "h:1");
  assert.deepEqual(
    node1.map((p) => [p.rank, p.env.LOCAL_RANK, p.env.WORLD_SIZE, p.env.NODE_RANK]),
    [
      [2, "0", "4", "1"],
      [3, "1", "4", "1"],
    ],
  );
});

Deno.test("launch: the CLI exits non-zero and names the failing rank", async () => {
  const cli = new URL("../lib/dist/launch.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      cli,
      "--gpus",
      "2",
      "--grace",
      "1",
      fixture("launch_fail.ts"),
      "1",
      "7",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 7);
  assert.match(stderr, /weft launch: failed: rank 1 exited with code 7/);
  assert.match(new TextDecoder().decode(out.stdout), /\[rank 0\] waiting/);
});

Deno.test("launch: SIGINT to the CLI stops every rank and exits 130", async () => {
  const cli = new URL("../lib/dist/launch.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      cli,
      "--gpus",
      "2",
      "--grace",
      "1",
      fixture("launch_fail.ts"),
      "-1",
      "0",
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let seen = "";
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  while ((seen.match(/waiting/g) ?? []).length < 2) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += value;
  }
  const start = Date.now();
  child.kill("SIGINT");
  await reader.cancel();
  const status = await child.status;
  assert.equal(status.code, 130);
  assert(Date.now() - start < 10_000);
  assert.match(await stderr, /weft launch: failed: interrupted/);
});
