/**
 * One rank of the GPU tests; started by tests/gpu/run.ts through
 * lib/launch.ts. Prints one `CASE <name> PASS|FAIL maxErr=<e> <detail>` line
 * per case (run.ts gathers them over ranks) and exits non-zero if a case
 * threw.
 *
 *   worker.ts cases        every case of tests/gpu/cases.ts
 *   worker.ts dead-peer    one good round, then the last rank exits; the
 *                          others must fail with a WeftError within 30 s
 *
 * @module
 */
import { readLaunchEnv } from "../../lib/dist/env.ts";
import { Communicator } from "../../lib/dist/communicator.ts";
import { Engine } from "../../lib/gpu/engine.ts";
import { WeftError } from "../../dsl/errors.ts";
import { caseInputs, caseMaxTokens, gpuCases, planFor, runCase } from "./cases.ts";

const mode = Deno.args[0] ?? "cases";
const env = readLaunchEnv();
const gpusPerNode = env.localWorld;
const timeoutMs = env.timeoutMs ?? (mode === "dead-peer" ? 10_000 : 60_000);
const cases = gpuCases(env.world, gpusPerNode);

// One heap serves every case: the largest any plan asks for.
const heapBytes = Math.max(
  ...cases.map((c) =>
    Engine.heapBytes(planFor(c, env.world, gpusPerNode), {
      maxTokens: caseMaxTokens(c, env.world),
      rank: env.rank,
    })
  ),
);

const comm = await Communicator.fromEnv({ timeoutMs, nccl: env.nodes > 1, heapBytes });

if (mode === "dead-peer") {
  await deadPeer();
} else {
  let threw = false;
  for (const c of cases) {
    try {
      const o = await runCase(comm, c, gpusPerNode);
      console.log(
        `CASE ${o.name} ${o.pass ? "PASS" : "FAIL"} maxErr=${o.maxErr.toExponential(2)} ${o.detail}`
          .trimEnd(),
      );
    } catch (error) {
      // A throw may leave peers inside a collective: stop here, the launcher stops the rest.
      console.log(
        `CASE ${c.name} FAIL threw ${error instanceof Error ? error.stack : String(error)}`
          .replaceAll("\n", " | "),
      );
      threw = true;
      break;
    }
    await comm.hostBarrier();
  }
  comm.close();
  await comm.store.closed;
  if (threw) Deno.exit(1);
}

async function deadPeer(): Promise<void> {
  const c = cases[0];
  const plan = planFor(c, env.world, gpusPerNode);
  const input = caseInputs(plan, c)[env.rank];
  using engine = await Engine.create(plan, comm, { maxTokens: caseMaxTokens(c, env.world) });
  const first = await engine.dispatch([input]);
  first.handle.close();
  await comm.hostBarrier();
  if (env.rank === env.world - 1) {
    console.log("DEADPEER exiting on purpose");
    Deno.exit(0);
  }
  const start = Date.now();
  try {
    const d = await engine.dispatch([input]);
    d.handle.close();
    console.log("DEADPEER FAIL the dispatch completed without the dead peer");
  } catch (error) {
    const ms = Date.now() - start;
    const clear = error instanceof WeftError && error.field === "peer";
    console.log(
      `DEADPEER ${clear ? "ERROR" : "UNCLEAR"} elapsedMs=${ms} ${
        String(error instanceof Error ? error.message : error)
      }`.replaceAll("\n", " | "),
    );
  }
  // Exiting non-zero is the point: the launcher must report this rank.
  Deno.exit(3);
}
