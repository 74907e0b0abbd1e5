/**
 * The {@link PlanSpec} fields, declared once: each field's name and how it is
 * written to plain JSON data, read back and checked. `Plan` (its constructor
 * and `toJSON`) and the layout's JSON/YAML forms all walk this one table, so a
 * new plan field cannot be forgotten by one of them: the table's type demands
 * an entry for every key of PlanSpec.
 *
 * @module
 */
import { WeftError } from "./errors.ts";
import type { PlanSpec } from "./types.ts";

/**
 * {@link PlanSpec} as plain JSON data: the Int32Array tables become number
 * arrays.
 *
 * @example
 * ```ts
 * import type { PlanJSON } from "./plan_fields.ts";
 * const slots: PlanJSON["slotBase"] = [0, 4, 8];
 * console.assert(slots.length === 3);
 * ```
 */
export type PlanJSON = {
  readonly [K in keyof PlanSpec]: PlanSpec[K] extends Int32Array ? number[] : PlanSpec[K];
};

/** How one plan field crosses to JSON data and back. */
interface FieldCodec {
  /** The field's value → plain JSON data. */
  encode(value: unknown): unknown;
  /** Plain JSON data → the field's value; throws a WeftError naming `field` if it cannot be. */
  decode(value: unknown, field: string): unknown;
}

function badField(field: string, want: string, value: unknown): never {
  throw new WeftError({
    field,
    problem: `must be ${want}, got ${
      Array.isArray(value) ? "an array" : value === null ? "null" : typeof value
    }`,
    fix: "pass the plan as layoutToJSON / plan.toJSON() wrote it",
  });
}

/** Integers and enumeration strings: written and read as they are. */
const SCALAR: FieldCodec = {
  encode: (v) => v,
  decode(v, field) {
    if (typeof v !== "number" && typeof v !== "string") badField(field, "a number or a string", v);
    return v;
  },
};

/** Int32Array tables: number arrays in JSON. */
const TABLE: FieldCodec = {
  encode: (v) => Array.from(v as Int32Array),
  decode(v, field) {
    if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x) && (x | 0) === x)) {
      badField(field, "an array of int32 integers", v);
    }
    return Int32Array.from(v);
  },
};

/** The pattern: plain data already; copied so the JSON form shares nothing with the plan. */
const PATTERN: FieldCodec = {
  encode: (v) => JSON.parse(JSON.stringify(v)),
  decode(v, field) {
    if (v === null || typeof v !== "object" || Array.isArray(v)) badField(field, "a mapping", v);
    return v;
  },
};

/**
 * Every {@link PlanSpec} field, in the order plans are written, with its
 * codec. The `satisfies` clause makes a field missing from this table a type
 * error.
 *
 * @example
 * ```ts
 * import { PLAN_FIELDS } from "./plan_fields.ts";
 * console.assert("quantize" in PLAN_FIELDS && "slotBase" in PLAN_FIELDS);
 * ```
 */
export const PLAN_FIELDS: Readonly<Record<keyof PlanSpec, FieldCodec>> = Object.freeze(
  {
    pattern: PATTERN,
    world: SCALAR,
    gpusPerNode: SCALAR,
    nodes: SCALAR,
    experts: SCALAR,
    topK: SCALAR,
    hidden: SCALAR,
    dtype: SCALAR,
    quantize: SCALAR,
    dedupe: SCALAR,
    balance: SCALAR,
    receive: SCALAR,
    combine: SCALAR,
    localExperts: TABLE,
    slotBase: TABLE,
    slotExpert: TABLE,
    replicaStart: TABLE,
    replicaSlots: TABLE,
  } satisfies { readonly [K in keyof PlanSpec]-?: FieldCodec },
);

/** The plan field names, in {@link PLAN_FIELDS} order. */
export const PLAN_FIELD_NAMES: readonly (keyof PlanSpec)[] = Object.freeze(
  Object.keys(PLAN_FIELDS) as (keyof PlanSpec)[],
);

/**
 * The fields of `spec` that are set, in {@link PLAN_FIELDS} order (unset
 * optional fields such as an absent `quantize` left out), as plain JSON data.
 * Works on a partial plan too (a layout's plan read back from text).
 *
 * @example
 * ```ts
 * import { planToJSON } from "./plan_fields.ts";
 * const json = planToJSON({ world: 2, quantize: "e4m3", slotBase: Int32Array.of(0, 1, 2) });
 * console.assert(json.quantize === "e4m3" && Array.isArray(json.slotBase));
 * ```
 */
export function planToJSON(spec: Partial<PlanSpec>): Partial<PlanJSON> {
  const out: Record<string, unknown> = {};
  for (const name of PLAN_FIELD_NAMES) {
    const value = spec[name];
    if (value !== undefined) out[name] = PLAN_FIELDS[name].encode(value);
  }
  return out as Partial<PlanJSON>;
}

/**
 * Reads plan fields back from plain JSON data ({@link planToJSON}'s output):
 * tables become Int32Arrays, every present field is checked by its codec,
 * an unknown field is rejected. `where` prefixes the field names in errors.
 *
 * @throws {WeftError} `${where}.field` for an unknown field or a value of the wrong kind.
 * @example
 * ```ts
 * import { planFromJSON } from "./plan_fields.ts";
 * const plan = planFromJSON({ world: 1, slotBase: [0, 2] }, "plan");
 * console.assert(plan.slotBase instanceof Int32Array && plan.world === 1);
 * ```
 */
export function planFromJSON(json: Record<string, unknown>, where: string): Partial<PlanSpec> {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(json)) {
    const codec = (PLAN_FIELDS as Record<string, FieldCodec | undefined>)[name];
    if (!Object.hasOwn(PLAN_FIELDS, name) || codec === undefined) {
      throw new WeftError({
        field: `${where}.${name}`,
        problem: "is not a plan field",
        fix: `remove it; the plan fields are ${PLAN_FIELD_NAMES.join(", ")}`,
      });
    }
    if (value !== undefined) out[name] = codec.decode(value, `${where}.${name}`);
  }
  return out as Partial<PlanSpec>;
}
