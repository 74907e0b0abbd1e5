import assert from "node:assert/strict";
import fc from "fast-check";
import {
  dequantizeRows,
  E4M3_MAX,
  e4m3Decode,
  e4m3Encode,
  QUANT_BLOCK,
  quantizeRows,
  scaleExponent,
} from "../lib/core/fp8.ts";
import { f32ToBf16 } from "../lib/core/dtype.ts";
import { weftError } from "./fixtures.ts";

/** Every finite E4M3 code's value, ascending, with its code. */
function finiteCodes(): { v: number; code: number }[] {
  const out: { v: number; code: number }[] = [];
  for (let c = 0; c < 256; c++) {
    const v = e4m3Decode(c);
    if (!Number.isNaN(v)) out.push({ v, code: c });
  }
  return out.sort((a, b) => a.v - b.v || (Object.is(a.v, -0) ? -1 : 1));
}

Deno.test("e4m3: decode knows the format's landmarks", () => {
  assert.equal(e4m3Decode(0x7e), 448);
  assert.equal(e4m3Decode(0xfe), -448);
  assert.ok(Number.isNaN(e4m3Decode(0x7f)) && Number.isNaN(e4m3Decode(0xff)));
  assert.equal(e4m3Decode(0x08), 2 ** -6); // least normal
  assert.equal(e4m3Decode(0x07), 7 * 2 ** -9); // largest subnormal
  assert.equal(e4m3Decode(0x38), 1);
  assert.ok(Object.is(e4m3Decode(0x80), -0));
  assert.equal(finiteCodes().length, 254);
});

Deno.test("e4m3: every finite code encodes back to itself", () => {
  for (const { v, code } of finiteCodes()) assert.equal(e4m3Encode(v), code, `code ${code}`);
});

Deno.test("e4m3: midpoints round to the even code, points beside them to the nearer", () => {
  const pos = finiteCodes().filter(({ v, code }) => v > 0 || code === 0);
  for (let i = 0; i + 1 < pos.length; i++) {
    const lo = pos[i], hi = pos[i + 1];
    const mid = (lo.v + hi.v) / 2;
    const even = (lo.code & 1) === 0 ? lo.code : hi.code;
    assert.equal(e4m3Encode(mid), even, `midpoint of ${lo.v} and ${hi.v}`);
    assert.equal(e4m3Encode(-mid), even | 0x80);
    const step = (hi.v - lo.v) / 1024;
    assert.equal(e4m3Encode(mid - step), lo.code);
    assert.equal(e4m3Encode(mid + step), hi.code);
  }
});

Deno.test("e4m3: saturates, keeps the sign of zero, and maps NaN to 0x7f", () => {
  assert.equal(e4m3Encode(460), 0x7e);
  assert.equal(e4m3Encode(1e30), 0x7e);
  assert.equal(e4m3Encode(-Infinity), 0xfe);
  assert.equal(e4m3Encode(Infinity), 0x7e);
  assert.equal(e4m3Encode(NaN), 0x7f);
  assert.equal(e4m3Encode(-0), 0x80);
  assert.equal(e4m3Encode(-(2 ** -11)), 0x80); // rounds to -0
  assert.equal(e4m3Encode(2 ** -10), 0); // halfway to the least subnormal: even is 0
});

Deno.test("scale exponent: the least e with amax ≤ 448·2^e, floored at -126", () => {
  fc.assert(
    fc.property(fc.float({ min: Math.fround(1e-30), max: Math.fround(3e38), noNaN: true }), (a) => {
      const e = scaleExponent(a);
      assert.ok(a <= E4M3_MAX * 2 ** e, `${a} fits 2^${e}`);
      assert.ok(e === -126 || a > E4M3_MAX * 2 ** (e - 1), `${a}: 2^${e - 1} would do`);
    }),
  );
  assert.equal(scaleExponent(0), 0);
  assert.equal(scaleExponent(Infinity), 0);
  assert.equal(scaleExponent(1e-44), -126); // an f32 subnormal
  assert.equal(scaleExponent(448 * 2 ** 5), 5);
  assert.equal(scaleExponent(448 * 2 ** 5 * (1 + 2 ** -23)), 6);
});

Deno.test("quantizeRows: per 128-element block, power-of-two scale, error within half an E4M3 step", () => {
  fc.assert(
    fc.property(
      fc.array(fc.float({ min: -1e6, max: 1e6, noNaN: true, noDefaultInfinity: true }), {
        minLength: 256,
        maxLength: 256,
      }),
      fc.integer({ min: -40, max: 40 }),
      (values, shift) => {
        const x = Float32Array.from(values, (v) => v * 2 ** shift);
        const q = quantizeRows(x, "f32", 128);
        const y = dequantizeRows(q, 128);
        for (let b = 0; b < 2; b++) {
          const s = q.scales[b];
          assert.ok(Number.isInteger(Math.log2(s)), "a power of two");
          for (let i = b * 128; i < (b + 1) * 128; i++) {
            const a = Math.abs(x[i] / s);
            assert.ok(a <= E4M3_MAX);
            // Half a step of the binade (subnormal quantum below 2^-6).
            const step = a < 2 ** -6 ? 2 ** -9 : 2 ** (Math.floor(Math.log2(a)) - 3);
            assert.ok(Math.abs(y[i] - x[i]) <= (step / 2) * s, `${x[i]} → ${y[i]}`);
          }
        }
      },
    ),
  );
});

Deno.test("quantizeRows: zero, NaN and Inf blocks follow the definition", () => {
  const x = new Float32Array(3 * QUANT_BLOCK);
  x[QUANT_BLOCK] = NaN;
  x[QUANT_BLOCK + 1] = 3; // amax 3 (NaN ignored): scale 2^-7
  x[2 * QUANT_BLOCK] = -Infinity;
  x[2 * QUANT_BLOCK + 1] = 1000; // in an Inf block (scale 1) it saturates
  const { q, scales } = quantizeRows(x, "f32", 3 * QUANT_BLOCK);
  assert.deepEqual(Array.from(scales), [1, 2 ** -7, 1]);
  assert.equal(q[0], 0);
  assert.equal(q[QUANT_BLOCK], 0x7f);
  assert.equal(e4m3Decode(q[QUANT_BLOCK + 1]) * scales[1], 3);
  assert.equal(q[2 * QUANT_BLOCK], 0xfe);
  assert.equal(q[2 * QUANT_BLOCK + 1], 0x7e);
});

Deno.test("quantizeRows: bf16 rows quantize as their f32 values do", () => {
  const f = Float32Array.from({ length: 256 }, (_, i) => Math.sin(i) * 100);
  const bf = f32ToBf16(f);
  const viaF32 = quantizeRows(
    new Float32Array(new Uint32Array(Array.from(bf, (b) => b << 16)).buffer),
    "f32",
    256,
  );
  const direct = quantizeRows(bf, "bf16", 256);
  assert.deepEqual(direct.q, viaF32.q);
  assert.deepEqual(direct.scales, viaF32.scales);
});

Deno.test("quantizeRows: a hidden size off the 128 grid names hidden", () => {
  const e = weftError(() => quantizeRows(new Float32Array(100), "f32", 100), "hidden");
  assert.match(e.message, /multiple of 128/);
  weftError(() => quantizeRows(new Uint8Array(128), "f32", 128), "rows");
});

Deno.test("dequantizeRows checks q and every scale before it writes the caller's output", () => {
  const H = 2 * QUANT_BLOCK;
  const q = quantizeRows(Float32Array.from({ length: 2 * H }, (_, i) => i / 7), "f32", H);
  const bads: [Float32Array, RegExp][] = [
    [q.scales.slice(0, 3), /4 scales/], // too short: was NaN in out
    [Float32Array.of(1, 1, NaN, 1), /row 1 block 0 has scale NaN/],
    [Float32Array.of(1, 0, 1, 1), /row 0 block 1 has scale 0/],
    [Float32Array.of(1, 1, 1, -2), /row 1 block 1 has scale -2/],
    [Float32Array.of(Infinity, 1, 1, 1), /row 0 block 0 has scale Infinity/],
  ];
  for (const [scales, message] of bads) {
    const out = new Float32Array(2 * H).fill(7);
    assert.throws(() => dequantizeRows({ q: q.q, scales }, H, out), (e: Error) => {
      assert.equal(e.name, "WeftError");
      assert.match(e.message, message);
      return true;
    });
    assert.ok(out.every((v) => v === 7), "out was written before the check");
  }
  // The scales quantizeRows wrote still pass.
  assert.equal(dequantizeRows(q, H).length, 2 * H);
});
