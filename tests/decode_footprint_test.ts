/**
 * Decode mode's memory, from the built libweft.so (weft_decode_heap_bytes
 * needs no GPU): equal to native/README.md's "Decode mode" formula, and the
 * plans decode mode refuses (skipped where the library is not built); and
 * `weft_decode_info`'s layout as the C compiler sees it (where cc exists).
 */
import assert from "node:assert/strict";
import { WeftError } from "../dsl/errors.ts";
import { experts } from "../dsl/mod.ts";
import type { PlanSpec } from "../dsl/types.ts";
import { DecodeEngine } from "../lib/gpu/decode.ts";
import { libraryPath } from "../lib/native/loader.ts";
import { DECODE_INFO, DECODE_INFO_MEMBERS } from "../lib/gpu/decode_info.ts";

// The built library only: a run that loaded tests/fixtures/mock_weft.c
// (WEFT_LIB, set by tests/fixtures/mock_lib.ts) has its own sizes.
const built = (() => {
  try {
    return !/mock/.test(libraryPath()) && Deno.statSync(libraryPath()).isFile;
  } catch {
    return false;
  }
})();
const here = (p: string) => new URL(p, import.meta.url).pathname;
const cc = (() => {
  try {
    return new Deno.Command("cc", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync()
      .success;
  } catch {
    return false; // no C compiler here
  }
})();
const a256 = (n: number) => Math.ceil(n / 256) * 256;

/** README: heap and device bytes of a decode engine, summed region by region. */
function formula(plan: PlanSpec, capacity: number, C: number, wireF32: boolean, rank = 0) {
  const { world: W, topK: K, hidden: H } = plan;
  const eb = plan.dtype === "f32" ? 4 : 2;
  const rb = H * eb, wb = H * (wireF32 ? 4 : eb);
  const S = plan.slotBase[W], L = plan.localExperts[rank];
  const heap = [
    16,
    512,
    capacity * rb,
    ...[0, 1, 2, 3].map(() => capacity * K * 4),
    S * 4,
    W * capacity * wb,
  ]
    .reduce((sum, b) => sum + a256(b), 4096);
  const device = [
    L * C * rb,
    capacity * rb,
    ...[0, 1, 2, 3].map(() => L * C * 4),
    L * 4 + 4,
    W * L * 4 + 4,
    W * 4,
    W * capacity * K * 4,
    64, // DecodeStatus (decode.h)
  ].reduce((sum, b) => sum + a256(b), 0);
  return { heap, device };
}

Deno.test({
  name: "decode footprint: native bytes equal the README's formula",
  ignore: !built,
  fn() {
    for (const world of [1, 2, 4, 8]) {
      for (const dtype of ["bf16", "f32"] as const) {
        const plan = experts(64).byDevice().topK(8).dtype(dtype).hidden(7168).compile({ world });
        for (const capacity of [1, 8, 256]) {
          for (const expertCapacity of [0, 3]) {
            for (const wire of ["dtype", "f32"] as const) {
              const f = DecodeEngine.footprint(plan, {
                capacity,
                expertCapacity,
                combineWire: wire,
              });
              const C = expertCapacity === 0
                ? world * capacity
                : Math.min(expertCapacity, world * capacity);
              const want = formula(plan, capacity, C, wire === "f32" || dtype === "f32");
              assert.deepEqual(
                [f.heapBytes, f.deviceBytes],
                [want.heap, want.device],
                `${world} ${dtype} ${capacity} ${expertCapacity} ${wire}`,
              );
              assert.equal(f.totalBytes, f.heapBytes + f.deviceBytes);
            }
          }
        }
      }
    }
  },
});

Deno.test({
  name: "decode footprint: quantize and rank-major plans are refused naming mode",
  ignore: !built,
  fn() {
    const rankMajor = experts(8).byDevice().topK(2).dtype("bf16").hidden(128).receive("rank-major")
      .compile({ world: 2 });
    const quantized = experts(8).byDevice().topK(2).dtype("bf16").hidden(128).quantize("e4m3")
      .compile({ world: 2 });
    for (const plan of [rankMajor, quantized]) {
      assert.throws(
        () => DecodeEngine.footprint(plan, { capacity: 4 }),
        (e: unknown) =>
          e instanceof WeftError && e.field === "mode" && /mode decode/.test(e.message),
      );
    }
    assert.throws(
      () => DecodeEngine.footprint(rankMajor, { capacity: 4, expertCapacity: -1 }),
      (e: unknown) => e instanceof WeftError && e.field === "expertCapacity",
    );
  },
});

Deno.test({
  name: "decode info: DECODE_INFO has weft.h's members in order, at the C compiler's offsets",
  ignore: !cc,
  async fn() {
    const header = await Deno.readTextFile(here("../native/include/weft.h"));
    const body = /typedef struct weft_decode_info \{([\s\S]*?)\} weft_decode_info;/.exec(header);
    assert(body !== null, "weft.h declares weft_decode_info");
    const names = [...body[1].replace(/\/\*[\s\S]*?\*\//g, "").matchAll(/(\w+);/g)].map((m) =>
      m[1]
    );
    assert.deepEqual(names, DECODE_INFO_MEMBERS.map(([n]) => n));
    const dir = await Deno.makeTempDir({ prefix: "weft-decode-info-" });
    try {
      const lines = names.map((n) =>
        `  printf("%s %zu\\n", "${n}", offsetof(weft_decode_info, ${n}));`
      );
      await Deno.writeTextFile(
        `${dir}/o.c`,
        `#include <stddef.h>\n#include <stdio.h>\n#include "${
          here("../native/include/weft.h")
        }"\n` +
          `int main(void) {\n${
            lines.join("\n")
          }\n  printf("bytes %zu\\n", sizeof(weft_decode_info));\n}\n`,
      );
      const build = await new Deno.Command("cc", { args: [`${dir}/o.c`, "-o", `${dir}/o`] })
        .output();
      assert.equal(build.code, 0, new TextDecoder().decode(build.stderr));
      const out = new TextDecoder().decode((await new Deno.Command(`${dir}/o`).output()).stdout);
      const got = Object.fromEntries(
        out.trim().split("\n").map((l) => l.split(" ")).map(([n, v]) => [n, +v]),
      );
      for (const n of names) {
        assert.equal(DECODE_INFO.offsets[n as keyof typeof DECODE_INFO.offsets], got[n], n);
      }
      assert.equal(DECODE_INFO.bytes, got.bytes);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
