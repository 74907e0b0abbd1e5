/**
 * Runs a benchmark's ranks through lib/dist/launch.ts and reads the result
 * rank 0 writes: the drivers of bench.ts and nodes.ts share it.
 *
 * @module
 */
import { launch } from "../lib/dist/launch.ts";
import type { LaunchOptions } from "../lib/dist/launch.ts";

/**
 * Launches `script` (a file of this folder) on `gpus` GPUs with the command
 * line `args(resultPath)`; returns rank 0's JSON result, or the launcher's
 * exit code (after saying why on stderr) when a rank failed. Worker output
 * goes to stderr: stdout is for the report.
 */
export async function launchWorkers<T>(
  script: string,
  gpus: number,
  args: (resultPath: string) => string[],
  extra: Pick<LaunchOptions, "ranksPerGpu" | "emulateNodes"> = {},
): Promise<T | number> {
  const dir = await Deno.makeTempDir({ prefix: "weft-bench-" });
  const resultPath = `${dir}/result.json`;
  try {
    const run = await launch({
      script: decodeURIComponent(new URL(script, import.meta.url).pathname),
      args: args(resultPath),
      gpus,
      ...extra,
      output: (_stream, text) => writeAll(Deno.stderr, text),
    });
    if (run.code !== 0) {
      console.error(`bench: workers failed: ${run.message ?? `exit code ${run.code}`}`);
      return run.code;
    }
    return JSON.parse(await Deno.readTextFile(resultPath)) as T;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function writeAll(target: { writeSync(p: Uint8Array): number }, text: string): void {
  const bytes = new TextEncoder().encode(text);
  let off = 0;
  while (off < bytes.length) off += target.writeSync(bytes.subarray(off));
}
