/**
 * The errors a store client raises when a wait runs out: each names the
 * keys or ranks that are missing and what to check.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";

/** Raised inside the client when the server reports a wait that ran out. */
export class MissingKeys extends Error {
  /** `missing`: indices of the keys not set; `waitedMs`: how long the server waited. */
  constructor(readonly missing: readonly number[], readonly waitedMs: number) {
    super("store wait timed out");
  }
}

/** How long a timed-out wait lasted, saying so when the server cut it short. */
function waited(error: MissingKeys, askedMs: number): string {
  return error.waitedMs < Math.floor(askedMs)
    ? `${error.waitedMs} ms (the store's maxWaitMs, the job's --timeout, cut the ${askedMs} ms asked)`
    : `${error.waitedMs} ms`;
}

/** The error for a get or wait on `keys` that ran out. */
export function missingKeysError(
  keys: readonly string[],
  error: MissingKeys,
  askedMs: number,
  address: string,
): WeftError {
  const names = error.missing.map((i) => `"${keys[i]}"`);
  return new WeftError({
    field: "store",
    problem: `${names.length === 1 ? "key" : "keys"} ${names.join(", ")} ${
      names.length === 1 ? "was" : "were"
    } not set within ${waited(error, askedMs)} (store ${address})`,
    fix:
      "the process that publishes it died, is stuck or never started: check its output; raise the timeout if it is only slow",
  });
}

/** The error for a barrier or allGather `name` that ran out. */
export function missingPeersError(
  name: string,
  rank: number,
  world: number,
  error: MissingKeys,
  askedMs: number,
): WeftError {
  return new WeftError({
    field: "peer",
    rank,
    problem: `rank${error.missing.length > 1 ? "s" : ""} ${
      error.missing.join(", ")
    } of ${world} did not reach "${name}" within ${waited(error, askedMs)}`,
    fix:
      "those ranks died, are stuck or never started: check their output (the launcher prefixes it with [rank r]); raise the timeout if they are only slow",
  });
}
