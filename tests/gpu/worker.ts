/**
 * One rank of the GPU tests; started by tests/gpu/run.ts through
 * lib/dist/launch.ts. Prints one `CASE <name> PASS|FAIL maxErr=<e> <detail>`
 * line per case (run.ts gathers them over ranks) and exits non-zero if a
 * case threw.
 *
 *   worker.ts cases [NAME]  every case of the world (cases.ts and
 *                           cases_precision.ts for one node, cases_nodes.ts
 *                           for several), or those whose name contains NAME
 *   worker.ts dead-peer     one good round, then the last rank exits; the
 *                           others must fail with a WeftError within 30 s
 *
 * @module
 */
import { readLaunchEnv } from "../../lib/dist/env.ts";
import { Communicator } from "../../lib/dist/communicator.ts";
import { Engine } from "../../lib/gpu/engine.ts";
import { WeftError } from "../../dsl/errors.ts";
import { caseInputs, caseMaxTokens, planFor } from "./case_data.ts";
import { gpuCases } from "./cases.ts";
import { nodeCases } from "./cases_nodes.ts";
import { runCase } from "./run_case.ts";
import { precisionCases, precisionHeapBytes, runPrecisionCase } from "./cases_precision.ts";
import { decodeCases, decodeHeapBytes, runDecodeCase } from "./cases_decode.ts";

const mode = Deno.args[0] ?? "cases";
const env = readLaunchEnv();
const gpusPerNode = env.localWorld;
const timeoutMs = env.timeoutMs ?? (mode === "dead-peer" ? 10_000 : 60_000);
const only = Deno.args[1];
const cases = (env.nodes > 1 ? nodeCases : gpuCases)(env.world, gpusPerNode)
  .filter((c) => only === undefined || c.name.includes(only));
const precision = precisionCases(env.world, gpusPerNode)
  .filter((c) => only === undefined || c.name.includes(only));
// Decode mode (cases_decode.ts) runs inside one node only.
const decode = (env.nodes > 1 ? [] : decodeCases(env.world))
  .filter((c) => only === undefined || c.name.includes(only));
if (cases.length === 0 && precision.length === 0 && decode.length === 0) {
  throw new Error(`no case of this world matches "${only}"`);
}

// One heap serves every case: the largest any plan asks for.
// A plan the engine may refuse (mayReject) may have no heap size either.
const heapBytes = Math.max(
  ...cases.map((c) => {
    try {
      return Engine.heapBytes(planFor(c, env.world, gpusPerNode), {
        maxTokens: caseMaxTokens(c, env.world),
        rank: env.rank,
      });
    } catch (error) {
      if (c.mayReject === undefined) throw error;
      return 0;
    }
  }),
  precision.length > 0 ? precisionHeapBytes(env.world, gpusPerNode, env.rank) : 0,
  decode.length > 0 ? decodeHeapBytes(env.world, env.rank) : 0,
);

const comm = await Communicator.fromEnv({ timeoutMs, nccl: env.nodes > 1, heapBytes });

if (mode === "dead-peer") {
  await deadPeer();
} else {
  // Every case as a step: a throw may leave peers inside a collective, so
  // the first one stops this rank (the launcher stops the rest).
  const steps = [
    ...cases.map((c) => ({ name: c.name, run: () => runCase(comm, c, gpusPerNode) })),
    ...precision.map((c) => ({ name: c.name, run: () => runPrecisionCase(comm, c, gpusPerNode) })),
    ...decode.map((c) => ({ name: c.name, run: () => runDecodeCase(comm, c) })),
  ];
  let threw = false;
  for (const step of steps) {
    try {
      const o = await step.run();
      console.log(
        `CASE ${o.name} ${o.pass ? "PASS" : "FAIL"} maxErr=${o.maxErr.toExponential(2)} ${o.detail}`
          .trimEnd(),
      );
    } catch (error) {
      console.log(
        `CASE ${step.name} FAIL threw ${error instanceof Error ? error.stack : String(error)}`
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
  // The launcher stops every rank once one exits non-zero: wait (bounded)
  // until every survivor has reported, so each one's own detection is judged.
  const survivors = Array.from({ length: env.world - 1 }, (_, r) => `dead-peer-reported-${r}`);
  await comm.store.set(survivors[env.rank], new Uint8Array(0));
  await comm.store.wait(survivors, timeoutMs + 5_000).catch(() => {});
  // Exiting non-zero is the point: the launcher must report this rank.
  Deno.exit(3);
}
