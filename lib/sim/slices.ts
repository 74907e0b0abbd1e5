/**
 * The slice schedule of the hierarchical protocol (native/HIER_PROTOCOL.md
 * "Slices"): every source → forwarder stream is cut into slices of C rows
 * and slice j of every stream moves in step j. A pure function of the
 * streams' row counts and C, so the Simulator, the tests and the GPU
 * engine's documentation can all check the same schedule.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";

/** One stream of rows from one rank to another (a source's segment for one forwarder, or its reverse). */
export interface SliceStream {
  /** Sending rank. */
  readonly src: number;
  /** Receiving rank. */
  readonly dst: number;
  /** Rows in the stream, in send order. */
  readonly rows: number;
}

/** One slice on the wire: rows [firstRow, firstRow + rows) of the stream src → dst. */
export interface SliceTransfer {
  /** Sending rank. */
  readonly src: number;
  /** Receiving rank. */
  readonly dst: number;
  /** The slice's first row, counted from the stream's start. */
  readonly firstRow: number;
  /** Rows in the slice: C, or fewer for a stream's last slice; never 0. */
  readonly rows: number;
}

/**
 * The steps that move `streams` in slices of `sliceRows` rows: step j holds
 * slice j of every stream longer than j·C, in the order the streams were
 * given. There are ⌈max rows / C⌉ steps (none when every stream is empty);
 * a stream of 0 rows sends nothing in any step (both sides skip it).
 *
 * @throws {WeftError} `sliceRows` unless it is an integer ≥ 1; `streams`
 *   for a negative or fractional row count.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { sliceSchedule } from "./slices.ts";
 * const steps = sliceSchedule([{ src: 0, dst: 2, rows: 5 }, { src: 1, dst: 3, rows: 2 }], 2);
 * assert.equal(steps.length, 3);
 * assert.deepEqual(steps[2], [{ src: 0, dst: 2, firstRow: 4, rows: 1 }]);
 * ```
 */
export function sliceSchedule(
  streams: readonly SliceStream[],
  sliceRows: number,
): SliceTransfer[][] {
  checkSliceRows(sliceRows);
  let most = 0;
  for (const s of streams) {
    if (!Number.isInteger(s.rows) || s.rows < 0) {
      throw new WeftError({
        field: "streams",
        problem: `stream ${s.src} → ${s.dst} has ${s.rows} rows`,
        fix: "give every stream a whole number of rows ≥ 0",
      });
    }
    most = Math.max(most, s.rows);
  }
  const steps: SliceTransfer[][] = [];
  for (let first = 0; first < most; first += sliceRows) {
    const step: SliceTransfer[] = [];
    for (const s of streams) {
      if (s.rows > first) {
        step.push({
          src: s.src,
          dst: s.dst,
          firstRow: first,
          rows: Math.min(sliceRows, s.rows - first),
        });
      }
    }
    steps.push(step);
  }
  return steps;
}

/**
 * Checks a slice size: an integer ≥ 1.
 *
 * @throws {WeftError} `sliceRows` otherwise.
 * @example
 * ```ts
 * import { checkSliceRows } from "./slices.ts";
 * checkSliceRows(64);
 * ```
 */
export function checkSliceRows(sliceRows: number): void {
  if (!Number.isInteger(sliceRows) || sliceRows < 1) {
    throw new WeftError({
      field: "sliceRows",
      problem: `must be an integer ≥ 1, got ${sliceRows}`,
      fix: "pass the rows per slice, e.g. sliceRows: 64",
    });
  }
}
