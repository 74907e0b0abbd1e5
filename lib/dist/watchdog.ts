/**
 * Ranks die with their launcher. The launcher starts every rank with
 * `deno run --preload lib/dist/watchdog_preload.ts …`, which runs
 * {@link watchParent} before the rank's script (which keeps its `import.meta.main` and `Deno.args`).
 *
 * Linux has `prctl(PR_SET_PDEATHSIG)` for this, but Deno cannot call it, so
 * the rank polls its parent instead: when the launcher dies, even by
 * `kill -9`, the rank is re-parented and `Deno.ppid` changes. The rank then
 * kills its own process group (the launcher starts each rank in its own
 * group, so that takes the rank's subprocesses too) and exits. The poll timer
 * is unref'd: it never keeps a finished rank alive.
 *
 * Polls every {@link WATCHDOG_INTERVAL_MS} ms; a rank blocked in native code
 * notices when it next returns to the event loop.
 *
 * @module
 */

/** How often a rank checks that its launcher is alive. */
export const WATCHDOG_INTERVAL_MS = 200;

/** Exit code of a rank whose launcher died (128 + SIGHUP, as a terminal hang-up would give). */
export const ORPHAN_EXIT_CODE = 129;

/**
 * Starts watching the parent process; returns a function that stops
 * watching. Does nothing (and returns a no-op) when the parent is already
 * gone at start.
 *
 * @example
 * ```ts
 * import { watchParent } from "./watchdog.ts";
 * const stop = watchParent();
 * stop();
 * ```
 */
export function watchParent(
  onOrphan: () => void = exitWithGroup,
  intervalMs: number = WATCHDOG_INTERVAL_MS,
): () => void {
  const parent = Deno.ppid;
  if (parent <= 1) return () => {};
  const timer = setInterval(() => {
    if (Deno.ppid === parent) return;
    clearInterval(timer);
    onOrphan();
  }, intervalMs);
  Deno.unrefTimer(timer);
  return () => clearInterval(timer);
}

/** Kills this process's group (its subprocesses) when it leads one, then exits. */
function exitWithGroup(): void {
  try {
    console.error(`weft: the launcher died; rank ${Deno.env.get("RANK") ?? "?"} exits`);
  } catch { /* no env permission: exit all the same */ }
  if (leadsGroup()) {
    try {
      Deno.kill(-Deno.pid, "SIGKILL");
    } catch { /* no run permission: at least this process goes */ }
  }
  Deno.exit(ORPHAN_EXIT_CODE);
}

/** True when this process leads its process group (so the group is its own to kill). */
function leadsGroup(): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${Deno.pid}/stat`);
    // Fields after the command (which may contain spaces): state ppid pgrp …
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[2]) === Deno.pid;
  } catch {
    return false;
  }
}
