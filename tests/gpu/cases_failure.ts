/**
 * The failure cases of one-node worlds: a bad batch that every rank must
 * reject with a WeftError, leaving earlier outputs untouched and the engine
 * usable (checked by run_failure.ts).
 *
 * @module
 */
import { type GpuCase, pattern } from "./case_data.ts";

/**
 * Bad input on one rank (an out-of-range expert id, host or device routing;
 * y of the wrong shape in combine) and more tokens than maxTokens.
 *
 * @example
 * ```ts
 * import { failureCases } from "./cases_failure.ts";
 * console.assert(failureCases().every((c) => c.failure !== undefined));
 * ```
 */
export function failureCases(): GpuCase[] {
  return [
    {
      name: "bad-expert-id-fails-every-rank",
      pattern: pattern({ experts: 64, hidden: 1000 }),
      tokens: [20, 7, 13, 1],
      routing: "uniform",
      seed: 10,
      failure: "bad-expert",
    },
    {
      // The out-of-range id sits in the last rank's i32 device tensor: only
      // the device check can see it, and every rank must fail naming topkIdx.
      name: "bad-expert-id-in-device-routing-fails-every-rank",
      pattern: pattern({ experts: 64, hidden: 1000 }),
      tokens: [11, 6, 19, 4],
      routing: "uniform",
      seed: 23,
      routingOnDevice: true,
      failure: "bad-expert",
    },
    {
      // The last rank passes y of the wrong shape: it throws at once; the
      // others' combine returns (its work queued) and its failure reaches
      // them at their next synchronization, naming the rank. The engine then
      // still works on every rank.
      name: "bad-combine-reported-by-every-rank",
      pattern: pattern({ experts: 32, topK: 4, hidden: 1024 }),
      tokens: [40, 33, 17, 25],
      routing: "uniform",
      seed: 15,
      failure: "bad-combine",
    },
    {
      name: "over-capacity-fails-every-rank",
      pattern: pattern({ experts: 64, dtype: "f32", hidden: 1000 }),
      tokens: [16, 3, 9, 16],
      routing: "uniform",
      seed: 11,
      maxTokens: 16,
      failure: "over-capacity",
    },
  ];
}
