/**
 * Runs one case on this rank against the CPU Simulator: dispatch bit for
 * bit (first, second, layout + redispatch, redispatch into a poisoned
 * buffer, a dispatch right after a combine), combine within the dtype's
 * rounding (or bit for bit) into a poisoned output and run to run, then a
 * second, smaller batch on the same engine. Failure cases go to
 * run_failure.ts.
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import type { HostRows, RoutingInput } from "../../lib/core/engine_api.ts";
import { toF32 } from "../../lib/core/dtype.ts";
import { isQuantizedInput } from "../../lib/core/input_check.ts";
import { WeftError } from "../../dsl/errors.ts";
import { Simulator } from "../../lib/sim/simulator.ts";
import type { Communicator } from "../../lib/dist/communicator.ts";
import { DeviceTensor } from "../../lib/gpu/device_tensor.ts";
import { Engine } from "../../lib/gpu/engine.ts";
import {
  caseInputs,
  caseMaxTokens,
  type CaseOutcome,
  caseYs,
  type GpuCase,
  planFor,
  tokensOf,
} from "./case_data.ts";
import {
  bits,
  combineError,
  combineScale,
  compareDispatch,
  firstDiff,
  unitRoundoff,
} from "./checks.ts";
import { type Placer, placers, routingOnDevice } from "./device_inputs.ts";
import { checkFailure } from "./run_failure.ts";

/**
 * This rank's engine for the case, or, for a case that allows the engine to
 * refuse its plan, "" when it did with a WeftError naming the field, or a
 * problem when it refused it otherwise.
 */
async function createEngine(
  comm: Communicator,
  plan: PlanSpec,
  c: GpuCase,
): Promise<Engine | string> {
  try {
    return await Engine.create(plan, comm, {
      maxTokens: caseMaxTokens(c, comm.world),
      ...(c.combineWire !== undefined ? { combineWire: c.combineWire } : {}),
    });
  } catch (error) {
    if (c.mayReject === undefined) throw error;
    const named = error instanceof WeftError &&
      (error.field === c.mayReject || error.message.includes(c.mayReject));
    return named ? "" : `refused the plan without naming ${c.mayReject}: ${String(error)}`;
  }
}

/** Runs one case on this rank (collective: every rank runs the same case). */
export async function runCase(
  comm: Communicator,
  c: GpuCase,
  gpusPerNode: number,
): Promise<CaseOutcome> {
  const outcome = (pass: boolean, maxErr: number, detail: string): CaseOutcome => ({
    name: c.name,
    pass,
    maxErr,
    detail,
  });
  const rank = comm.rank;
  const plan = planFor(c, comm.world, gpusPerNode);
  const inputs = caseInputs(plan, c);
  using sim = new Simulator(plan);
  const oracle = await sim.dispatch(inputs);
  const created = await createEngine(comm, plan, c);
  if (typeof created === "string") {
    oracle.handle.close();
    return outcome(created === "", 0, created === "" ? "rejected the plan as allowed" : created);
  }
  using engine = created;
  const temporaries: DeviceTensor[] = [];
  const { rows: onSide, x: xOnSide } = placers(engine, plan, c, temporaries);
  try {
    const mine = inputs[rank];
    const tokens = mine.topkIdx.length / plan.topK;
    let x = xOnSide(mine.x, tokens);
    let routing: RoutingInput = c.routingOnDevice
      ? routingOnDevice(engine, plan, mine, temporaries)
      : { topkIdx: mine.topkIdx, topkWeights: mine.topkWeights };
    if (c.inPlace && isQuantizedInput(mine.x)) {
      const views = engine.inputQuantizedRows(tokens);
      views.q.write(mine.x.q as Uint8Array);
      views.scales.write(mine.x.scales as Float32Array);
      x = views;
    } else if (c.inPlace) {
      const rows = engine.inputRows(tokens);
      rows.write(mine.x as HostRows);
      x = rows;
      const staging = engine.inputRouting(tokens);
      staging.topkIdx.set(mine.topkIdx);
      staging.topkWeights.set(mine.topkWeights);
      routing = staging;
    }
    const first = await engine.dispatch([{ x, ...routing }]);
    const want = oracle.results[rank];
    const problems: string[] = [];
    const d1 = await compareDispatch(first.results[0], want);
    if (d1) problems.push(`dispatch: ${d1}`);

    if (c.failure !== undefined) {
      return outcome(
        ...await checkFailure(engine, plan, c, inputs, first, want, problems, temporaries),
      );
    }

    const second = await engine.dispatch([{ x, ...routing }]);
    const again = await compareDispatch(second.results[0], first.results[0]);
    if (again) problems.push(`second dispatch differs from the first: ${again}`);
    second.handle.close();

    // The layout step alone, then the rows through it, equals one dispatch
    // (from the device tensors, when the case's routing is there).
    const planned = await engine.layout([
      c.routingOnDevice ? routing : { topkIdx: mine.topkIdx, topkWeights: mine.topkWeights },
    ]);
    const plannedRecv = (await engine.redispatch(planned, [x])).results[0];
    const split = await compareDispatch(plannedRecv, want);
    if (split) problems.push(`layout + redispatch: ${split}`);
    planned.close();

    // Every row of the receive buffer must be rewritten by a re-dispatch.
    const recv = first.results[0].recv;
    if (recv instanceof DeviceTensor) recv.poison();
    const scales = first.results[0].recvScales;
    if (scales instanceof DeviceTensor) scales.poison();
    await engine.redispatch(first.handle, [x]);
    const re = await compareDispatch(first.results[0], want);
    if (re) problems.push(`redispatch into a poisoned buffer: ${re}`);

    const { maxErr, problem, out, y } = await checkCombine(
      engine,
      sim,
      plan,
      c,
      oracle,
      first.handle,
      tokens,
      onSide,
      temporaries,
    );
    if (problem) problems.push(problem);
    const [out2] = await engine.combine(first.handle, [y]);
    // A dispatch while that combine still runs on the GPU (its begin half
    // finds the tail in flight, settles it, then goes on).
    const third = await engine.dispatch([{ x, ...routing }]);
    const overlapped = await compareDispatch(third.results[0], want);
    if (overlapped) problems.push(`dispatch right after combine: ${overlapped}`);
    third.handle.close();
    const twice = firstDiff(bits(await out2.read()), bits(await out.read()));
    out2.close();
    if (twice >= 0) problems.push(`combine is not deterministic: runs differ at element ${twice}`);
    first.handle.close();
    oracle.handle.close();

    // A smaller batch with new inputs (routing and x uploaded afresh when
    // the case has them on the device) on the same engine: dispatch replays
    // launches captured once, so the token count, the routing, the index
    // arrays and recv must all be this call's, not an earlier call's.
    const half = caseInputs(plan, c, (r) => Math.floor(tokensOf(c, r) / 2));
    const halfOracle = await sim.dispatch(half);
    const mineHalf = half[rank];
    const tHalf = mineHalf.topkIdx.length / plan.topK;
    const halfRouting: RoutingInput = c.routingOnDevice
      ? routingOnDevice(engine, plan, mineHalf, temporaries)
      : { topkIdx: mineHalf.topkIdx, topkWeights: mineHalf.topkWeights };
    const smaller = await engine.dispatch([{ x: xOnSide(mineHalf.x, tHalf), ...halfRouting }]);
    const dHalf = await compareDispatch(smaller.results[0], halfOracle.results[rank]);
    if (dHalf) problems.push(`a smaller batch after these: ${dHalf}`);
    const halfCombine = await checkCombine(
      engine,
      sim,
      plan,
      c,
      halfOracle,
      smaller.handle,
      tHalf,
      onSide,
      temporaries,
    );
    if (halfCombine.problem) problems.push(`a smaller batch after these: ${halfCombine.problem}`);
    smaller.handle.close();
    halfOracle.handle.close();
    return outcome(problems.length === 0, maxErr, problems.join("; "));
  } finally {
    for (const t of temporaries) t.close();
  }
}

/**
 * Combines `handle`'s batch on the GPU into a poisoned output (the experts'
 * outputs from caseYs) and checks it against the Simulator's combine of the
 * same batch; returns the output (closed with `temporaries`) and y.
 */
async function checkCombine(
  engine: Engine,
  sim: Simulator,
  plan: PlanSpec,
  c: GpuCase,
  oracle: Awaited<ReturnType<Simulator["dispatch"]>>,
  handle: Awaited<ReturnType<Engine["dispatch"]>>["handle"],
  tokens: number,
  onSide: Placer,
  temporaries: DeviceTensor[],
): Promise<
  { maxErr: number; problem: string; out: DeviceTensor<DType>; y: HostRows | DeviceTensor }
> {
  const rank = engine.rank;
  const recvRows = oracle.results.map((r) => r.recv.rows);
  const ys = caseYs(plan, c, recvRows);
  const wantRows = await (await sim.combine(oracle.handle, ys))[rank].read();
  const wantOut = toF32(wantRows, plan.dtype);
  const out = DeviceTensor.alloc(engine.device, plan.dtype, tokens, plan.hidden);
  temporaries.push(out);
  out.poison();
  const y = onSide(ys[rank], recvRows[rank]);
  await engine.combine(handle, [y], { out: [out] });
  const gotRows = await out.read();
  if (c.combineBitwise) {
    const i = firstDiff(bits(gotRows), bits(wantRows));
    if (i >= 0) {
      return {
        maxErr: Infinity,
        problem: `combine differs from the Simulator's bit for bit at element ${i}`,
        out,
        y,
      };
    }
  }
  const got = toF32(gotRows, plan.dtype);
  const u = unitRoundoff(plan.dtype);
  // The default wire carries partials in the dtype (one more rounding each).
  const uWire = c.combineWire === "f32" ? 2 ** -24 : u;
  const bound = 2 * u + (plan.topK + 2) * Math.max(uWire, 2 ** -24);
  const { maxErr, problem } = combineError(
    got,
    wantOut,
    combineScale(plan, rank, tokens, oracle.results, ys),
    bound,
  );
  return {
    maxErr,
    problem: problem ? `combine beyond ${bound.toExponential(2)}: ${problem}` : "",
    out,
    y,
  };
}
