/**
 * What the native library finds on this machine: CUDA devices and NCCL,
 * each a WeftError saying why when it is missing.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { native } from "./loader.ts";
import { unwrap } from "./status.ts";

/**
 * The number of CUDA devices, or a WeftError saying why there are none
 * (no library, no driver, no GPU).
 *
 * @example
 * ```ts ignore
 * import { deviceCount } from "./device.ts";
 * console.log(`${deviceCount()} GPUs`);
 * ```
 */
export function deviceCount(): number {
  const out = new Int32Array(1);
  unwrap(native().weft_device_count(out), "weft_device_count", { field: "device" });
  if (out[0] === 0) {
    throw new WeftError({
      field: "device",
      problem: "the CUDA driver reports no GPU",
      fix:
        "run on a machine with an NVIDIA GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use the Simulator",
    });
  }
  return out[0];
}

/**
 * Throws a WeftError unless the native side could load NCCL.
 *
 * @example
 * ```ts ignore
 * import { requireNccl } from "./device.ts";
 * requireNccl();
 * ```
 */
export function requireNccl(): void {
  const out = new Int32Array(1);
  unwrap(native().weft_nccl_available(out), "weft_nccl_available", { field: "nccl" });
  if (out[0] !== 1) {
    throw new WeftError({
      field: "nccl",
      problem: "libnccl.so.2 could not be loaded",
      fix:
        "install NCCL (e.g. the nvidia-nccl-cu12 wheel or libnccl2), or create the Communicator with nccl: false",
    });
  }
}
