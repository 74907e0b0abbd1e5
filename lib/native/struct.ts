/**
 * C structs of weft.h declared once in TypeScript: member names and C types
 * in declaration order, from which the byte offsets follow (x86-64 System V:
 * int32 is 4-aligned, pointers 8-aligned, a struct is aligned to its widest
 * member and padded to a multiple of it). The writer and reader below use
 * the offsets; tests/ffi_test.ts compares members, types and offsets with
 * weft.h as the C compiler sees it, so a struct changes by one edit here plus
 * one in weft.h.
 *
 * @module
 */
import { pointerValue } from "./pointers.ts";

/** The C member types weft's structs use. */
export type CType = "int32_t" | "pointer";

/** Size and alignment of each {@link CType}. */
export const C_TYPE_BYTES: Readonly<Record<CType, number>> = Object.freeze({
  int32_t: 4,
  pointer: 8,
});

/** Members in declaration order: `[C name, C type]`. */
export type CMembers = readonly (readonly [string, CType])[];

/**
 * Padding members (`pad_` in weft.h): part of the layout, always written as
 * 0, never passed in.
 */
export type Padding = "pad_";

/** One member with its offset. */
export interface CField<M extends CMembers = CMembers> {
  /** The member's C name. */
  readonly name: M[number][0];
  /** Its C type. */
  readonly type: CType;
  /** Its byte offset. */
  readonly offset: number;
}

/** A struct's layout. */
export interface CStruct<M extends CMembers = CMembers> {
  /** The C typedef name, e.g. `weft_plan_desc`. */
  readonly name: string;
  /** Every member, padding included, in declaration order. */
  readonly fields: readonly CField<M>[];
  /** Offsets by member name. */
  readonly offsets: Readonly<Record<M[number][0], number>>;
  /** `sizeof` the struct. */
  readonly bytes: number;
}

type ValueOf<T extends CType> = T extends "int32_t" ? number : Deno.PointerValue;

/** What a reader returns: every member's value by name (pointers as pointers). */
export type CValues<M extends CMembers> = {
  readonly [E in M[number] as E[0]]: ValueOf<E[1]>;
};

/** What a writer takes: every member but padding. */
export type CInput<M extends CMembers> = {
  readonly [E in M[number] as Exclude<E[0], Padding>]: ValueOf<E[1]>;
};

/**
 * Lays out a struct from its members.
 *
 * @example
 * ```ts
 * import { cStruct } from "./struct.ts";
 * const s = cStruct("s", [["n", "int32_t"], ["p", "pointer"]] as const);
 * console.assert(s.offsets.p === 8 && s.bytes === 16);
 * ```
 */
export function cStruct<const M extends CMembers>(name: string, members: M): CStruct<M> {
  let offset = 0;
  let align = 1;
  const fields: CField<M>[] = [];
  for (const [member, type] of members) {
    const size = C_TYPE_BYTES[type];
    offset = roundUp(offset, size);
    fields.push(Object.freeze({ name: member, type, offset }));
    offset += size;
    align = Math.max(align, size);
  }
  const offsets = Object.freeze(
    Object.fromEntries(fields.map((f) => [f.name, f.offset])),
  ) as Record<M[number][0], number>;
  return Object.freeze({
    name,
    fields: Object.freeze(fields),
    offsets,
    bytes: roundUp(offset, align),
  });
}

/**
 * The bytes of `struct` holding `values` (padding zeroed).
 *
 * @example
 * ```ts
 * import { cStruct, writeStruct } from "./struct.ts";
 * const s = cStruct("s", [["n", "int32_t"], ["pad_", "int32_t"], ["p", "pointer"]] as const);
 * const bytes = writeStruct(s, { n: 7, p: null });
 * console.assert(new DataView(bytes.buffer).getInt32(0, true) === 7);
 * ```
 */
export function writeStruct<M extends CMembers>(
  struct: CStruct<M>,
  values: CInput<M>,
): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(struct.bytes);
  const view = new DataView(bytes.buffer);
  const given = values as Readonly<Record<string, number | Deno.PointerValue>>;
  for (const { name, type, offset } of struct.fields) {
    if (name === "pad_") continue;
    const value = given[name];
    if (type === "int32_t") view.setInt32(offset, value as number, true);
    else view.setBigUint64(offset, pointerValue(value as Deno.PointerValue), true);
  }
  return bytes;
}

/**
 * Reads every member of `struct` from `raw` (as native filled it in).
 *
 * @example
 * ```ts
 * import { cStruct, readStruct } from "./struct.ts";
 * const s = cStruct("s", [["n", "int32_t"]] as const);
 * console.assert(readStruct(s, Uint8Array.of(5, 0, 0, 0)).n === 5);
 * ```
 */
export function readStruct<M extends CMembers>(struct: CStruct<M>, raw: Uint8Array): CValues<M> {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out: Record<string, number | Deno.PointerValue> = {};
  for (const { name, type, offset } of struct.fields) {
    out[name] = type === "int32_t"
      ? view.getInt32(offset, true)
      : Deno.UnsafePointer.create(view.getBigUint64(offset, true));
  }
  return out as CValues<M>;
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}
