import assert from "node:assert/strict";
import fc from "fast-check";
import {
  bf16ToF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  fromF32,
  roundThrough,
  toF32,
} from "../lib/core/dtype.ts";
import { weftError } from "./fixtures.ts";

const bitsOf = (x: number): number => new Uint32Array(Float32Array.of(x).buffer)[0];
const fromBits = (u: number): number => new Float32Array(Uint32Array.of(u).buffer)[0];
const bf16 = (x: number): number => f32ToBf16(Float32Array.of(x))[0];

/** Round-to-nearest-even to bf16 by comparing the two neighbours in f64. */
function referenceBf16(u: number): number {
  const sign = u & 0x80000000;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return -1; // NaN: checked separately
  const lo = a & 0xffff0000;
  const hi = lo + 0x10000;
  const x = fromBits(a);
  const loV = fromBits(lo);
  const hiV = hi >= 0x7f800000 ? 2 ** 128 : fromBits(hi); // Inf sits where 2^128 would
  const dl = x - loV;
  const dh = hiV - x;
  const pick = dl < dh ? lo : dh < dl ? hi : ((lo >>> 16) & 1) === 0 ? lo : hi;
  return ((pick >>> 16) | (sign >>> 16)) & 0xffff;
}

Deno.test("bf16 rounds to nearest, ties to even", () => {
  assert.equal(bf16(1), 0x3f80);
  assert.equal(bf16(1 + 2 ** -8), 0x3f80); // tie → even (down)
  assert.equal(bf16(1 + 3 * 2 ** -8), 0x3f82); // tie → even (up)
  assert.equal(bf16(1 + 2 ** -8 + 2 ** -20), 0x3f81); // above the tie
  assert.equal(bf16(-2), 0xc000);
  assert.equal(bf16(Infinity), 0x7f80);
  assert.equal(bf16(-Infinity), 0xff80);
  assert.equal(bf16(fromBits(0x7f7fffff)), 0x7f80); // max f32 overflows to Inf
  assert.equal(bf16(-0), 0x8000);
});

Deno.test("bf16 keeps NaN a NaN, with its sign, even when only low payload bits are set", () => {
  const out = f32ToBf16(
    new Float32Array(Uint32Array.of(0x7f800001, 0xff800001, 0x7fc00000).buffer),
  );
  for (const h of out) assert.ok(Number.isNaN(bf16ToF32(Uint16Array.of(h))[0]));
  assert.equal(out[0] & 0x8000, 0);
  assert.equal(out[1] & 0x8000, 0x8000);
});

Deno.test("every bf16 pattern survives bf16 → f32 → bf16 (NaNs stay NaN)", () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const back = f32ToBf16(bf16ToF32(all));
  for (let i = 0; i < 65536; i++) {
    if ((i & 0x7fff) > 0x7f80) assert.ok((back[i] & 0x7fff) > 0x7f80, `NaN ${i} lost`);
    else assert.equal(back[i], i);
  }
});

Deno.test("property: f32 → bf16 matches a round-to-nearest-even reference", () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 1, maxLength: 64 }),
      (us) => {
        const out = f32ToBf16(new Float32Array(Uint32Array.from(us).buffer));
        us.forEach((u, i) => {
          const want = referenceBf16(u);
          if (want === -1) assert.ok((out[i] & 0x7fff) > 0x7f80);
          else assert.equal(out[i], want, `bits 0x${u.toString(16)}`);
        });
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("every f16 pattern survives f16 → f32 → f16; f32 → f16 equals Math.f16round", () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const back = f32ToF16(f16ToF32(all));
  for (let i = 0; i < 65536; i++) {
    if ((i & 0x7fff) > 0x7c00) assert.ok((back[i] & 0x7fff) > 0x7c00);
    else assert.equal(back[i], i);
  }
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffffffff }), (u) => {
      const x = fromBits(u);
      const got = f16ToF32(f32ToF16(Float32Array.of(x)))[0];
      if (Number.isNaN(x)) assert.ok(Number.isNaN(got));
      else assert.ok(Object.is(got, Math.f16round(x)), `${x}`);
    }),
    { numRuns: 500 },
  );
  assert.equal(f32ToF16(Float32Array.of(1 + 2 ** -11))[0], 0x3c00); // tie → even
  assert.equal(f32ToF16(Float32Array.of(70000))[0], 0x7c00); // overflow → Inf
});

Deno.test("toF32/fromF32 dispatch on dtype, write into out arrays, and reject the wrong array type", () => {
  const v = Float32Array.of(1.5, -3, 0.1);
  assert.equal(toF32(v, "f32"), v); // f32: no copy
  assert.deepStrictEqual(toF32(fromF32(v, "bf16"), "bf16"), roundThrough(v.slice(), "bf16"));
  assert.deepStrictEqual(
    toF32(fromF32(v, "f16"), "f16"),
    Float32Array.of(1.5, -3, Math.f16round(0.1)),
  );
  const out = new Uint16Array(3);
  assert.equal(fromF32(v, "bf16", out), out);
  assert.equal(out[0], bitsOf(1.5) >>> 16);
  weftError(() => toF32(new Float32Array(2), "bf16"), "rows");
  weftError(() => toF32(new Uint16Array(2), "f32"), "rows");
  weftError(() => f32ToBf16(v, new Uint16Array(2)), "out");
});

Deno.test("fromF32 and toF32 reject a dtype that is not a row dtype before writing out", () => {
  const out = new Uint16Array(2).fill(0xabcd);
  const e = weftError(() => fromF32(Float32Array.of(1, 2), "fp8" as "f16", out), "dtype");
  assert.match(e.message, /got "fp8"/);
  assert.deepStrictEqual(Array.from(out), [0xabcd, 0xabcd]);
  weftError(() => toF32(new Uint16Array(2), "e4m3" as "bf16"), "dtype");
  weftError(() => roundThrough(new Float32Array(2), "i32" as "f32"), "dtype");
});
