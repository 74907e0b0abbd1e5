/**
 * The FFI binding without a GPU: the loader's errors, the symbol table and
 * the ABI version against weft.h, the struct layouts (by hand and as the C
 * compiler sees weft.h), status → WeftError mapping, and the failing rank
 * as tests/fixtures/mock_weft.c (a host-memory stand-in for libweft.so built
 * here with cc) reports it. The engine's calls against the mock are in
 * tests/engine_mock_test.ts.
 */
import assert from "node:assert/strict";
import { ABI_VERSION, symbols } from "../lib/native/ffi.ts";
import { libraryPath, load, native } from "../lib/native/loader.ts";
import { lastError, nativeError, Status, unwrap } from "../lib/native/status.ts";
import { deviceCount } from "../lib/native/device.ts";
import {
  IPC_HANDLE_BYTES,
  pointerValue,
  readPointer,
  stableCopy,
  UNIQUE_ID_BYTES,
} from "../lib/native/pointers.ts";
import type { CStruct, CType } from "../lib/native/struct.ts";
import { Codes, packPlanDesc, PLAN_DESC, planDescFields } from "../lib/gpu/plan_desc.ts";
import { decodeDispatchInfo, DISPATCH_INFO } from "../lib/gpu/dispatch_info.ts";
import { WeftError } from "../dsl/errors.ts";
import { Communicator } from "../lib/dist/communicator.ts";
import { StoreServer } from "../lib/dist/store.ts";
import { experts } from "../dsl/mod.ts";
import { compile, here, mock, soloRank, tmp, withCc, withEnv } from "./fixtures/mock_lib.ts";

const header = here("../native/include/weft.h");
const headerText = Deno.readTextFileSync(header);

// ---------------------------------------------------------------- no compiler needed

Deno.test("loader: a missing library is a WeftError that says to run `deno task build`", () => {
  assert.throws(() => load("/nonexistent/libweft.so"), (e: unknown) => {
    assert(e instanceof WeftError);
    assert.equal(e.field, "native library");
    assert.match(e.message, /\/nonexistent\/libweft\.so/);
    assert.match(e.message, /deno task build/);
    return true;
  });
});

Deno.test("loader: WEFT_LIB overrides the path, else the build of this checkout", () => {
  assert.equal(libraryPath({ WEFT_LIB: "/opt/weft/libweft.so" }), "/opt/weft/libweft.so");
  assert.equal(libraryPath({}), here("../native/build/libweft.so"));
});

Deno.test("loader: a file that is not a shared library is a WeftError naming it", () => {
  const path = Deno.makeTempFileSync({ suffix: ".so" });
  Deno.writeTextFileSync(path, "not an ELF file");
  try {
    assert.throws(
      () => load(path),
      (e: unknown) =>
        e instanceof WeftError && e.message.includes(path) && /cannot load/.test(e.message),
    );
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("ffi: every function of weft.h is in the symbol table, and nothing else", () => {
  const declared = [...headerText.matchAll(/^int32_t (weft_\w+)\(/gm)].map((m) => m[1]).sort();
  assert.deepEqual(Object.keys(symbols).sort(), declared);
  const long = Object.entries(symbols).filter(([, s]) => "nonblocking" in s && s.nonblocking)
    .map(([n]) => n).sort();
  assert.deepEqual(long, [
    "weft_baseline_run",
    "weft_combine",
    "weft_comm_barrier",
    "weft_comm_create",
    "weft_comm_create2",
    "weft_comm_open_peers",
    "weft_comm_sync",
    "weft_copy_ceiling",
    "weft_decode_check",
    "weft_decode_create",
    "weft_dispatch",
    "weft_dispatch_finish",
    "weft_dispatch_layout",
    "weft_redispatch",
    "weft_redispatch_e4m3",
    "weft_timer_stop",
  ]);
});

Deno.test("ffi: every symbol's parameters are as many as its C prototype has, each commented", () => {
  const source = ["ffi.ts", "ffi_decode.ts"].map((f) =>
    Deno.readTextFileSync(new URL(`../lib/native/${f}`, import.meta.url))
  ).join("\n");
  for (const [name, symbol] of Object.entries(symbols)) {
    const prototype = new RegExp(`^int32_t ${name}\\(([^)]*)\\);`, "m").exec(
      headerText.replace(/\/\*[\s\S]*?\*\//g, ""),
    );
    assert(prototype !== null, name);
    const cParams = prototype[1].trim() === "void" ? [] : prototype[1].split(",");
    assert.equal(symbol.parameters.length, cParams.length, name);
    // Each parameter sits on its own line with a comment naming the C parameter.
    const start = source.indexOf(`\n  ${name}: {`) + 1;
    assert(start > 0, name);
    const rest = source.slice(start);
    const entry = rest.slice(0, rest.slice(1).search(/\n {2}(weft_|\/\/|\})/) + 1);
    const commented = entry.match(/^\s+"\w+", \/\/ /gm) ?? [];
    assert.equal(commented.length, cParams.length, `${name}: one comment per parameter`);
  }
});

Deno.test("ffi: ABI_VERSION is weft.h's WEFT_ABI_VERSION", () => {
  const macro = /^#define WEFT_ABI_VERSION (\d+)/m.exec(headerText);
  assert(macro !== null, "weft.h defines WEFT_ABI_VERSION");
  assert.equal(ABI_VERSION, Number(macro[1]));
});

Deno.test("ffi: status codes, plan codes and byte sizes equal weft.h's macros", () => {
  const macro = (name: string): number => {
    const m = new RegExp(`^#define ${name} (\\d+)`, "m").exec(headerText);
    assert(m !== null, `weft.h defines ${name}`);
    return Number(m[1]);
  };
  for (const [name, code] of Object.entries(Status)) {
    assert.equal(code, macro(name === "OK" ? "WEFT_OK" : `WEFT_ERR_${name}`), name);
  }
  assert.equal(UNIQUE_ID_BYTES, macro("WEFT_UNIQUE_ID_BYTES"));
  assert.equal(IPC_HANDLE_BYTES, macro("WEFT_IPC_HANDLE_BYTES"));
  const macros: Record<string, Record<string, string>> = {
    dtype: { bf16: "WEFT_BF16", f16: "WEFT_F16", f32: "WEFT_F32" },
    dedupe: { none: "WEFT_DEDUPE_NONE", device: "WEFT_DEDUPE_DEVICE", node: "WEFT_DEDUPE_NODE" },
    receive: { "expert-major": "WEFT_EXPERT_MAJOR", "rank-major": "WEFT_RANK_MAJOR" },
    combine: { weighted: "WEFT_WEIGHTED", sum: "WEFT_SUM" },
    quantize: { none: "WEFT_QUANTIZE_NONE", e4m3: "WEFT_QUANTIZE_E4M3" },
    balance: { rail: "WEFT_BALANCE_RAIL", greedy: "WEFT_BALANCE_GREEDY" },
  };
  for (const [kind, codes] of Object.entries(Codes)) {
    assert.deepEqual(Object.keys(codes).sort(), Object.keys(macros[kind]).sort(), kind);
    for (const [value, code] of Object.entries(codes)) {
      assert.equal(code, macro(macros[kind][value]), `${kind} ${value}`);
    }
  }
});

Deno.test("struct: weft_plan_desc and weft_dispatch_info offsets match the x86-64 layout by hand", () => {
  // 14 int32 members (balance last), 4 bytes each from 0; 14·4 = 56 is 8-aligned,
  // so the 5 pointers (8 bytes, 8-aligned) follow without padding; 56 + 5·8 = 96.
  PLAN_DESC.fields.forEach((f, i) =>
    assert.equal(f.offset, i < 14 ? 4 * i : 56 + 8 * (i - 14), f.name)
  );
  assert.equal(PLAN_DESC.bytes, 96);
  // weft_dispatch_info: 4 int32 (pad_ included) = 16, then 8 pointers: 16 + 64 = 80.
  assert.deepEqual(DISPATCH_INFO.fields.map((f) => f.offset), [
    0,
    4,
    8,
    12,
    16,
    24,
    32,
    40,
    48,
    56,
    64,
    72,
  ]);
  assert.equal(DISPATCH_INFO.bytes, 80);
});

/** The members of `typedef struct name {…} name;` in weft.h, in order, with their kind of type. */
function headerMembers(name: string): [string, CType][] {
  const text = headerText.replace(/\/\*[\s\S]*?\*\//g, "");
  const body = new RegExp(`typedef struct ${name} \\{([^}]*)\\} ${name};`).exec(text);
  assert(body !== null, `weft.h declares ${name}`);
  return body[1].split(";").map((d) => d.trim()).filter((d) => d !== "").flatMap((decl) => {
    const [, type, declarators] = /^(?:const\s+)?(\w+)\s*(.*)$/s.exec(decl)!;
    return declarators.split(",").map((d): [string, CType] => {
      const pointer = d.trim().startsWith("*");
      assert(pointer || type === "int32_t", `${name}.${d.trim()}: only int32_t and pointers`);
      return [d.replace(/\*/g, "").trim(), pointer ? "pointer" : "int32_t"];
    });
  });
}

Deno.test("struct: the TS declarations have weft.h's members, types and order", () => {
  for (const struct of [PLAN_DESC, DISPATCH_INFO] as CStruct[]) {
    assert.deepEqual(
      struct.fields.map((f) => [f.name, f.type]),
      headerMembers(struct.name),
      struct.name,
    );
  }
});

Deno.test("ffi: a packed plan desc holds the plan's values and points at its arrays", () => {
  const plan = experts(8).byDevice().topK(2).dtype("f16").hidden(64).dedupe("none").receive(
    "rank-major",
  ).combine("sum")
    .replicate([1], 2).compile({ world: 2 });
  const { bytes, keepAlive } = packPlanDesc(
    planDescFields(plan, 1, { maxTokens: 77, combineWire: "dtype" }),
  );
  const view = new DataView(bytes.buffer);
  const int = (name: keyof typeof PLAN_DESC.offsets): number =>
    view.getInt32(PLAN_DESC.offsets[name], true);
  assert.deepEqual(
    [int("world"), int("rank"), int("gpus_per_node"), int("experts"), int("top_k"), int("hidden")],
    [2, 1, 2, 8, 2, 64],
  );
  assert.deepEqual([int("dtype"), int("dedupe"), int("receive"), int("combine")], [1, 0, 1, 1]);
  assert.deepEqual([int("max_tokens"), int("combine_wire_f32"), int("quantize")], [77, 0, 0]);
  assert.equal(int("balance"), 0);
  const arrays = [
    plan.localExperts,
    plan.slotBase,
    plan.slotExpert,
    plan.replicaStart,
    plan.replicaSlots,
  ];
  PLAN_DESC.fields.filter((f) => f.type === "pointer").forEach(({ offset }, i) => {
    const ptr = Deno.UnsafePointer.create(view.getBigUint64(offset, true));
    assert.notEqual(ptr, null);
    const seen = new Int32Array(
      new Deno.UnsafePointerView(ptr!).getArrayBuffer(arrays[i].byteLength),
    );
    assert.deepEqual([...seen], [...arrays[i]]);
  });
  assert.equal(keepAlive.length, 5);
});

Deno.test("ffi: small typed arrays are copied into their own buffer, large ones are not", () => {
  const small = new Int32Array([1, 2, 3]);
  const copy = stableCopy(small);
  assert.notEqual(copy, small);
  assert.deepEqual([...copy], [1, 2, 3]);
  const large = new Float32Array(1000);
  assert.equal(stableCopy(large), large);
  assert.equal(pointerValue(readPointer(BigUint64Array.of(0x2000n))), 0x2000n);
});

Deno.test("ffi: a dispatch info decodes counts and pointers from their offsets", () => {
  const raw = new Uint8Array(DISPATCH_INFO.bytes);
  const view = new DataView(raw.buffer);
  view.setInt32(DISPATCH_INFO.offsets.tokens, 5, true);
  view.setInt32(DISPATCH_INFO.offsets.recv_rows, 9, true);
  view.setInt32(DISPATCH_INFO.offsets.local_experts, 3, true);
  DISPATCH_INFO.fields.filter((f) => f.type === "pointer").forEach(({ offset }, i) =>
    view.setBigUint64(offset, BigInt(0x1000 * (i + 1)), true)
  );
  const info = decodeDispatchInfo(raw);
  assert.deepEqual([info.tokens, info.recvRows, info.localExperts], [5, 9, 3]);
  const ptrs = [
    info.recv,
    info.recvWeights,
    info.expertCounts,
    info.srcRank,
    info.srcToken,
    info.srcK,
    info.recvScales,
  ];
  // dest_row (the 7th pointer) is native's own and not decoded.
  assert.deepEqual(ptrs.map(pointerValue), [1, 2, 3, 4, 5, 6, 8].map((i) => BigInt(0x1000 * i)));
});

Deno.test("status: statuses map to WeftErrors naming the right field", () => {
  const bad = nativeError(
    Status.BAD_INPUT,
    "weft_dispatch",
    { message: "rank 3: topk_idx[5] = 300 out of range", rank: 3 },
    { rank: 0 },
  );
  assert.equal(bad.field, "topkIdx");
  assert.equal(bad.rank, 3);
  assert.match(bad.message, /topk_idx\[5\] = 300/);
  assert.deepEqual(bad.cause, {
    call: "weft_dispatch",
    status: 4,
    message: "rank 3: topk_idx[5] = 300 out of range",
    rank: 3,
  });
  const peer = { rank: 0 };
  assert.equal(
    nativeError(Status.TIMEOUT, "weft_combine", { message: "peer 2 did not arrive", rank: 2 }, peer)
      .field,
    "peer",
  );
  const none = { message: "", rank: -1 };
  assert.equal(nativeError(Status.CAPACITY, "weft_dispatch", none).field, "maxTokens");
  assert.equal(nativeError(Status.CAPACITY, "x", none, { field: "tokens" }).field, "tokens");
  assert.equal(nativeError(Status.INVALID, "weft_free", none).field, "weft_free");
  assert.equal(nativeError(Status.NO_DEVICE, "weft_device_count", none).field, "device");
  assert.equal(nativeError(Status.NCCL, "weft_comm_create", none).field, "nccl");
  assert.equal(nativeError(Status.CUDA, "weft_alloc", none, { field: "x" }).field, "cuda");
  assert.match(nativeError(Status.CUDA, "weft_alloc", none).message, /no message/);
  assert.match(nativeError(42, "weft_alloc", none).message, /unknown status 42/);
});

Deno.test("status: the rank at fault is weft_last_error_rank's, never parsed from the message", () => {
  // The message names rank 5; native says rank 2 failed: rank 2 it is.
  const named = { message: "rank(s) 5 failed during dispatch", rank: 2 };
  assert.equal(nativeError(Status.BAD_INPUT, "weft_dispatch_finish", named, { rank: 0 }).rank, 2);
  // No rank known to native: this process's rank, whatever the message says.
  const unknown = { message: "rank 5: topk_idx[0] = 99", rank: -1 };
  assert.equal(nativeError(Status.BAD_INPUT, "weft_dispatch", unknown, { rank: 1 }).rank, 1);
  assert.equal(nativeError(Status.BAD_INPUT, "weft_dispatch", unknown).rank, undefined);
});

// ---------------------------------------------------------------- against the mock library

Deno.test({
  name: "struct: weft.h's structs have exactly the declared offsets for the C compiler",
  ...withCc,
  fn() {
    // A C program generated from the TS declarations: a member TS declares and
    // C lacks fails to compile; one C has and TS lacks fails the member test above.
    const structs = [PLAN_DESC, DISPATCH_INFO] as CStruct[];
    const lines = structs.map((s) =>
      [
        `  printf("\\"${s.name}\\":{");`,
        ...s.fields.map((f) => `  printf("\\"${f.name}\\":%zu,", offsetof(${s.name}, ${f.name}));`),
        `  printf("\\"sizeof\\":%zu}${s === structs.at(-1) ? "" : ","}", sizeof(${s.name}));`,
      ].join("\n")
    );
    const source = `${tmp}/struct_offsets.c`;
    Deno.writeTextFileSync(
      source,
      `#include <stddef.h>\n#include <stdio.h>\n#include "${header}"\n\nint main(void) {\n` +
        `  printf("{");\n${lines.join("\n")}\n  printf("}\\n");\n  return 0;\n}\n`,
    );
    const exe = `${tmp}/struct_offsets`;
    compile(source, exe);
    const c = JSON.parse(new TextDecoder().decode(new Deno.Command(exe).outputSync().stdout));
    for (const s of structs) {
      assert.deepEqual(c[s.name], { ...s.offsets, sizeof: s.bytes }, s.name);
    }
  },
});

Deno.test({
  name: "loader: a library of another ABI version is refused with a rebuild hint",
  ...withCc,
  async fn() {
    await withEnv({ MOCK_ABI: "99" }, () => {
      assert.throws(
        () => load(mock),
        (e: unknown) =>
          e instanceof WeftError && /ABI version 99/.test(e.message) &&
          /native\/build\/libweft\.so/.test(e.message) && /deno task build/.test(e.message),
      );
    });
    assert.equal(load(mock).symbols.weft_abi_version(), ABI_VERSION);
  },
});

Deno.test({
  name: "status: no driver is a WeftError on `device` carrying the native message, no rank",
  ...withCc,
  async fn() {
    await withEnv({ MOCK_NO_DEVICE: "1" }, () => {
      assert.throws(
        deviceCount,
        (e: unknown) =>
          e instanceof WeftError && e.field === "device" && e.rank === undefined &&
          /cudaErrorNoDevice \(mock\)/.test(e.message),
      );
    });
    assert.equal(lastError().rank, -1);
    assert.equal(deviceCount(), 1);
  },
});

Deno.test({
  name: "status: a failure's rank comes from weft_last_error_rank, not the message or the caller",
  ...withCc,
  async fn() {
    await using server = StoreServer.listen();
    await using comm = await Communicator.create(soloRank(server.address));
    const plan = experts(4).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 1 });
    // A descriptor for rank 5 on rank 0's communicator: the mock names rank 0
    // (the comm's) as failing, in a message that mentions "plan rank 5" first.
    const { bytes, keepAlive } = packPlanDesc(planDescFields(plan, 5, { maxTokens: 4 }));
    const out = new BigUint64Array(1);
    const status = native().weft_engine_create(comm.nativeHandle, bytes, out);
    void keepAlive;
    assert.equal(status, Status.INVALID);
    assert.deepEqual(lastError(), {
      message: "weft_engine_create: plan rank 5, comm rank 0",
      rank: 0,
    });
    assert.throws(
      () => unwrap(status, "weft_engine_create", { rank: 9, field: "plan" }),
      (e: unknown) => e instanceof WeftError && e.rank === 0 && e.field === "plan",
    );
  },
});
