/**
 * The checks of the failure cases: a bad batch must throw a WeftError on
 * every rank (each rank checks itself), leave the previous batch's buffer as
 * it was, and the next good batch must still be right.
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import type { DispatchResult, RankInput } from "../../lib/core/engine_api.ts";
import { WeftError } from "../../dsl/errors.ts";
import type { DeviceTensor } from "../../lib/gpu/device_tensor.ts";
import type { Engine } from "../../lib/gpu/engine.ts";
import { failingInputs, type GpuCase, type HostInput, randomRows } from "./case_data.ts";
import { bits, compareDispatch } from "./checks.ts";
import { routingOnDevice } from "./device_inputs.ts";

/** The rank whose input `failingInputs` spoils. */
function badRankOf(plan: PlanSpec, bad: readonly HostInput[], good: readonly HostInput[]): number {
  const r = bad.findIndex((input, i) => input !== good[i]);
  return r >= 0 ? r : plan.world - 1;
}

/**
 * The failure cases: a bad batch must throw a WeftError on this rank (every
 * rank checks itself), leave the previous batch's buffer as it was, and the
 * next good batch must still be right.
 */
export async function checkFailure(
  engine: Engine,
  plan: PlanSpec,
  c: GpuCase,
  inputs: readonly HostInput[],
  first: Awaited<ReturnType<Engine["dispatch"]>>,
  want: DispatchResult,
  problems: string[],
  temporaries: DeviceTensor[],
): Promise<[boolean, number, string]> {
  const rank = engine.rank;
  if (c.failure === "bad-combine") {
    return checkCombineFailure(engine, plan, inputs, first, want, problems);
  }
  const recv = first.results[0].recv as DeviceTensor<DType | "e4m3">;
  recv.poison();
  const bad = failingInputs(plan, c, inputs);
  const mine: RankInput = c.routingOnDevice
    ? { ...bad[rank], ...routingOnDevice(engine, plan, bad[rank], temporaries) }
    : bad[rank];
  // Device routing: every rank has tokens, so the bad id is the only fault.
  const fields = c.routingOnDevice ? ["topkIdx"] : ["topkIdx", "tokens"];
  const badRank = badRankOf(plan, bad, inputs);
  try {
    const d = await engine.dispatch([mine]);
    d.handle.close();
    problems.push("the bad batch did not throw on this rank");
  } catch (error) {
    if (!(error instanceof WeftError)) {
      problems.push(`threw ${String(error)} instead of a WeftError`);
    } else if (!fields.includes(error.field)) {
      problems.push(`WeftError names "${error.field}": ${error.message}`);
    } else if (
      (c.routingOnDevice || c.nameBadRank) &&
      !new RegExp(`rank(\\(s\\))? ${badRank}\\b`).test(error.message)
    ) {
      // The bad rank says "… on rank N …", its peers "rank(s) N failed …".
      problems.push(`the WeftError does not name rank ${badRank}: ${error.message}`);
    }
  }
  const after = bits(await recv.read());
  if (after.some((v) => v !== (after instanceof Uint32Array ? 0xffffffff : 0xffff))) {
    problems.push("the bad batch wrote into an earlier batch's receive buffer");
  }
  first.handle.close();
  const next = await engine.dispatch([inputs[rank]]);
  const ok = await compareDispatch(next.results[0], want);
  if (ok) problems.push(`the engine is broken after the failure: ${ok}`);
  next.handle.close();
  return [problems.length === 0, 0, problems.join("; ")];
}

/**
 * A combine that one rank rejects on the host (y of the wrong shape): that
 * rank throws at once; every other rank learns it at its next
 * synchronization (on one node the combine returned with its work queued;
 * across nodes, at combine itself), from a WeftError that names the failing
 * rank and `ys`; afterwards dispatch and combine still work everywhere.
 */
async function checkCombineFailure(
  engine: Engine,
  plan: PlanSpec,
  inputs: readonly HostInput[],
  first: Awaited<ReturnType<Engine["dispatch"]>>,
  want: DispatchResult,
  problems: string[],
): Promise<[boolean, number, string]> {
  const rank = engine.rank;
  const last = inputs.length - 1;
  const rows = first.results[0].recv.rows;
  const y = rank === last
    ? randomRows(() => 0.5, (rows + 1) * plan.hidden, plan.dtype) // one row too many
    : randomRows(() => 0.25, rows * plan.hidden, plan.dtype);
  try {
    const [out] = await engine.combine(first.handle, [y]);
    out.close();
    if (rank === last) problems.push("the bad combine did not throw on the rank that passed it");
    try {
      await engine.synchronize();
      problems.push("a peer's bad combine was not reported by synchronize()");
    } catch (error) {
      if (
        !(error instanceof WeftError) || !new RegExp(`rank\\(s\\) ${last}\\b`).test(error.message)
      ) {
        problems.push(
          `synchronize() threw something that does not name rank ${last}: ${String(error)}`,
        );
      }
    }
  } catch (error) {
    if (rank !== last) {
      // Across nodes the engine's calls return when their work is done, so a
      // good rank learns of the peer's bad combine from combine itself.
      const acrossNodes = plan.world / plan.gpusPerNode > 1;
      const named = error instanceof WeftError && error.field === "ys" &&
        new RegExp(`rank(\\(s\\))? ${last}\\b`).test(error.message);
      if (!acrossNodes || !named) problems.push(`combine threw on a good rank: ${String(error)}`);
    } else if (!(error instanceof WeftError) || error.field !== "ys") {
      problems.push(`the bad rank's error does not name ys: ${String(error)}`);
    }
  }
  first.handle.close();
  const next = await engine.dispatch([inputs[rank]]);
  const again = await compareDispatch(next.results[0], want);
  if (again) problems.push(`dispatch after the failed combine: ${again}`);
  const ys = randomRows(() => 0.125, next.results[0].recv.rows * plan.hidden, plan.dtype);
  const [out] = await engine.combine(next.handle, [ys]);
  await out.read();
  out.close();
  next.handle.close();
  return [problems.length === 0, 0, problems.join("; ")];
}
