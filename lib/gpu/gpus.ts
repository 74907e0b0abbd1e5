/**
 * Whether this machine can run the GPU engine, without throwing: the demo and
 * the GPU test runner use it to choose between the GPU engine and the CPU
 * Simulator, and to say why when they fall back.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { deviceCount } from "../native/device.ts";

/** How many GPUs the engine can use here, and why none when there are none. */
export interface GpuProbe {
  /** GPUs the engine can use (0 when it cannot run here). */
  readonly count: number;
  /** Why count is 0 (library not built, no driver, no GPU); undefined otherwise. */
  readonly reason?: string;
}

/**
 * Probes for GPUs through the native library; never throws.
 *
 * @example
 * ```ts
 * import { probeGpus } from "./gpus.ts";
 * const { count, reason } = probeGpus();
 * console.assert(count > 0 || typeof reason === "string");
 * ```
 */
export function probeGpus(): GpuProbe {
  try {
    return { count: deviceCount() };
  } catch (e) {
    return { count: 0, reason: e instanceof WeftError ? e.message : String(e) };
  }
}

/**
 * The number of GPUs the engine can use here (0 when none, for any reason).
 *
 * @example
 * ```ts
 * import { availableGpus } from "./gpus.ts";
 * console.assert(availableGpus() >= 0);
 * ```
 */
export function availableGpus(): number {
  return probeGpus().count;
}
