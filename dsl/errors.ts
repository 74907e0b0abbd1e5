/** What a {@link WeftError} is built from. */
export interface WeftErrorInfo {
  /** The field, argument or setting at fault, as the user wrote it (`topkIdx`, `pattern.topK`, `placement.owners[3]`). */
  field: string;
  /** What is wrong with it. */
  problem: string;
  /** What the user should do instead. */
  fix: string;
  /** The rank whose input was at fault, where ranks are involved. */
  rank?: number;
  /** 1-based line in a YAML/JSON source, where the input came from text. */
  line?: number;
  /** 1-based column in that line, where known (syntax errors). */
  column?: number;
  /** The underlying error (a native status, a parse error). */
  cause?: unknown;
}

/**
 * The one error type weft throws for bad input or a failed engine call.
 *
 * Every WeftError names the field that was wrong, the rank it was found on
 * (where ranks are involved) and what to do about it, so a user can fix the
 * call without reading weft's source.
 *
 * @example
 * ```ts
 * import { WeftError } from "./errors.ts";
 * const e = new WeftError({ field: "topK", problem: "must be ≥ 1, got 0", fix: "call .topK(k) with k ≥ 1" });
 * console.assert(e.message.includes("topK"));
 * ```
 */
export class WeftError extends Error {
  /** The field, argument or setting at fault. */
  readonly field: string;
  /** What is wrong with it. */
  readonly problem: string;
  /** What the user should do instead. */
  readonly fix: string;
  /** The rank whose input was at fault, where ranks are involved. */
  readonly rank?: number;
  /** 1-based line in a YAML/JSON source, where the input came from text. */
  readonly line?: number;
  /** 1-based column in that line, where known (syntax errors). */
  readonly column?: number;

  /** Builds the message `field (rank r, line l, column c): problem. Fix: fix` from `info`, keeping its `cause`. */
  constructor(info: WeftErrorInfo) {
    const where = [
      info.rank !== undefined ? `rank ${info.rank}` : undefined,
      info.line !== undefined ? `line ${info.line}` : undefined,
      info.column !== undefined ? `column ${info.column}` : undefined,
    ].filter((s) => s !== undefined).join(", ");
    super(
      `${info.field}${where ? ` (${where})` : ""}: ${info.problem}. Fix: ${info.fix}`,
      info.cause !== undefined ? { cause: info.cause } : undefined,
    );
    this.name = "WeftError";
    this.field = info.field;
    this.problem = info.problem;
    this.fix = info.fix;
    this.rank = info.rank;
    this.line = info.line;
    if (info.column !== undefined) this.column = info.column;
  }
}
