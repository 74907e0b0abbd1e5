/**
 * A case's inputs put where the case says: x, y and the routing as device
 * tensors on this rank's GPU, or left in host arrays. Every tensor made is
 * pushed on `temporaries` for the caller to close.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import type { HostRows, RankInput, RankRouting } from "../../lib/core/engine_api.ts";
import { QUANT_BLOCK } from "../../lib/core/fp8.ts";
import { isQuantizedInput } from "../../lib/core/input_check.ts";
import { DeviceTensor } from "../../lib/gpu/device_tensor.ts";
import type { Engine } from "../../lib/gpu/engine.ts";
import type { GpuCase } from "./case_data.ts";

/**
 * A rank's routing uploaded to its GPU, as a router there leaves it: ids as
 * an i32 [T × K] DeviceTensor, weights as an f32 one (closed by the caller,
 * from `temporaries`).
 */
export function routingOnDevice(
  engine: Engine,
  plan: PlanSpec,
  input: RankRouting,
  temporaries: DeviceTensor[],
): { topkIdx: DeviceTensor<"i32">; topkWeights: DeviceTensor<"f32"> } {
  const T = input.topkIdx.length / plan.topK;
  const topkIdx = DeviceTensor.upload(engine.device, "i32", T, plan.topK, input.topkIdx);
  temporaries.push(topkIdx);
  const topkWeights = DeviceTensor.upload(engine.device, "f32", T, plan.topK, input.topkWeights);
  temporaries.push(topkWeights);
  return { topkIdx, topkWeights };
}

/** Rows put on this rank's GPU when the case passes them there, else as they are. */
export type Placer = (rows: HostRows, n: number) => HostRows | DeviceTensor;

/**
 * The case's placement of rows (`rows`) and of x, plain or pre-quantized
 * (`x`: both parts on the device too when the case says so).
 */
export function placers(
  engine: Engine,
  plan: PlanSpec,
  c: GpuCase,
  temporaries: DeviceTensor[],
): { rows: Placer; x: (x: RankInput["x"], n: number) => RankInput["x"] } {
  const rows: Placer = (host, n) => {
    if (!c.onDevice) return host;
    const t = DeviceTensor.upload(engine.device, plan.dtype, n, plan.hidden, host);
    temporaries.push(t);
    return t;
  };
  const x = (x: RankInput["x"], n: number): RankInput["x"] => {
    if (!isQuantizedInput(x)) return rows(x as HostRows, n);
    if (!c.onDevice) return x;
    const q = DeviceTensor.upload(engine.device, "e4m3", n, plan.hidden, x.q as Uint8Array);
    const scales = DeviceTensor.upload(
      engine.device,
      "f32",
      n,
      plan.hidden / QUANT_BLOCK,
      x.scales as Float32Array,
    );
    temporaries.push(q, scales);
    return { q, scales };
  };
  return { rows, x };
}
