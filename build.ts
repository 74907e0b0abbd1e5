/**
 * Builds the native engine: native/src/*.cu and *.cpp → native/build/libweft.so.
 *
 * Usage: `deno run --allow-all build.ts [--clean] [--verbose] [--tests]`
 *
 * Finds nvcc ($NVCC, then PATH, then /usr/local/cuda/bin), compiles each
 * source to an object in parallel (sm_90 and sm_80 machine code, the CUDA
 * runtime linked statically), then links the shared library. Per-kernel
 * register and spill figures from ptxas go to native/build/ptxas.txt. Sources
 * whose object is newer than them and every header are not recompiled; the
 * link is skipped when the library is newer than every object. `--tests` also
 * builds native/build/weft_engine_test (native/tests/engine_test.cpp), the
 * multi-process check and benchmark of the C ABI on the GPUs, and
 * native/build/fabric_probe (bench/fabric_probe.cu), the NVLink rate of each
 * way to move bytes between the GPUs.
 *
 * @module
 */

const ROOT = new URL(".", import.meta.url).pathname;
const SRC = `${ROOT}native/src`;
const INCLUDE = `${ROOT}native/include`;
const OUT = `${ROOT}native/build`;
const OBJ = `${OUT}/obj`;
const LIB = `${OUT}/libweft.so`;
const PTXAS = `${OUT}/ptxas.txt`;

const COMMON_FLAGS = [
  "-O3",
  "-std=c++17",
  "-Xcompiler",
  "-fPIC,-Wall,-Wextra,-Wno-unused-parameter",
  "--cudart",
  "static",
  "-gencode",
  "arch=compute_90,code=sm_90",
  "-gencode",
  "arch=compute_80,code=sm_80",
  "-lineinfo",
  "-Xptxas",
  "-v",
  `-I${INCLUDE}`,
];

interface Options {
  clean: boolean;
  verbose: boolean;
  tests: boolean;
}

function parseArgs(args: string[]): Options {
  const opts: Options = { clean: false, verbose: false, tests: false };
  for (const a of args) {
    if (a === "--clean") opts.clean = true;
    else if (a === "--verbose") opts.verbose = true;
    else if (a === "--tests") opts.tests = true;
    else {
      console.error(`build.ts: unknown flag ${a} (known: --clean, --verbose, --tests)`);
      Deno.exit(2);
    }
  }
  return opts;
}

async function isExecutable(path: string): Promise<boolean> {
  try {
    const st = await Deno.stat(path);
    return st.isFile && ((st.mode ?? 0o111) & 0o111) !== 0;
  } catch {
    return false;
  }
}

async function findNvcc(): Promise<string | undefined> {
  const env = Deno.env.get("NVCC");
  if (env && await isExecutable(env)) return env;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir && await isExecutable(`${dir}/nvcc`)) return `${dir}/nvcc`;
  }
  for (const path of ["/usr/local/cuda/bin/nvcc"]) {
    if (await isExecutable(path)) return path;
  }
  return undefined;
}

async function mtime(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

async function listFiles(dir: string, exts: string[]): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && exts.some((x) => e.name.endsWith(x))) out.push(`${dir}/${e.name}`);
  }
  return out.sort();
}

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[]): Promise<Result> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function show(cmd: string, args: string[]): string {
  return [cmd, ...args].map((a) => (/[\s,]/.test(a) ? `'${a}'` : a)).join(" ");
}

/** ptxas -v lines go to the report; everything else nvcc printed is a warning or an error. */
function splitPtxas(stderr: string): { ptxas: string[]; other: string[] } {
  const ptxas: string[] = [];
  const other: string[] = [];
  for (const line of stderr.split("\n")) {
    if (line.startsWith("ptxas info") || line.startsWith("    ")) ptxas.push(line);
    else if (line.trim() !== "") other.push(line);
  }
  return { ptxas, other };
}

/** Runs `jobs` with at most `limit` in flight. */
async function pool<T>(limit: number, jobs: (() => Promise<T>)[]): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  const workers = Array.from({ length: Math.max(1, Math.min(limit, jobs.length)) }, async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  });
  await Promise.all(workers);
  return results;
}

async function main(): Promise<void> {
  const opts = parseArgs(Deno.args);
  if (opts.clean) {
    await Deno.remove(OUT, { recursive: true }).catch(() => {});
    console.log(`removed ${OUT}`);
  }
  const nvcc = await findNvcc();
  if (!nvcc) {
    console.error(
      "build.ts: nvcc not found. The native engine needs the CUDA 13 toolkit's nvcc: set NVCC to its path, " +
        "put it on PATH, or install it at /usr/local/cuda/bin/nvcc.",
    );
    Deno.exit(1);
  }
  const version = await run(nvcc, ["--version"]);
  const release = /release (\d+)\.(\d+)/.exec(version.stdout);
  if (opts.verbose) console.log(version.stdout.trim());
  if (!release || Number(release[1]) < 13) {
    console.warn(
      `build.ts: warning: ${nvcc} is CUDA ${
        release ? `${release[1]}.${release[2]}` : "(unknown)"
      }; ` +
        "weft is built and tested with nvcc 13.",
    );
  }

  await Deno.mkdir(OBJ, { recursive: true });
  const sources = await listFiles(SRC, [".cu", ".cpp"]);
  const headers = [
    ...(await listFiles(SRC, [".h", ".cuh", ".map"])),
    ...(await listFiles(INCLUDE, [".h"])),
    `${ROOT}build.ts`,
  ];
  let newestHeader = 0;
  for (const h of headers) newestHeader = Math.max(newestHeader, await mtime(h));

  const objects = sources.map((s) =>
    `${OBJ}/${s.slice(SRC.length + 1).replace(/\.(cu|cpp)$/, ".o")}`
  );
  const reports = objects.map((o) => o.replace(/\.o$/, ".ptxas.txt"));
  const stale: number[] = [];
  for (let i = 0; i < sources.length; i++) {
    const obj = await mtime(objects[i]);
    if (obj === 0 || obj < (await mtime(sources[i])) || obj < newestHeader) stale.push(i);
  }

  const parallel = Math.max(1, navigator.hardwareConcurrency ?? 2);
  let failed = false;
  await pool(
    parallel,
    stale.map((i) => async () => {
      const args = [...COMMON_FLAGS, "-c", sources[i], "-o", objects[i]];
      console.log(show(nvcc, args));
      const t0 = performance.now();
      const r = await run(nvcc, args);
      const { ptxas, other } = splitPtxas(r.stderr);
      await Deno.writeTextFile(
        reports[i],
        `== ${sources[i].slice(ROOT.length)}\n${ptxas.join("\n")}\n`,
      );
      if (r.stdout.trim()) console.log(r.stdout.trim());
      if (other.length > 0) console.error(other.join("\n"));
      if (r.code !== 0) {
        failed = true;
        await Deno.remove(objects[i]).catch(() => {});
        console.error(
          `build.ts: compiling ${sources[i].slice(ROOT.length)} failed (exit ${r.code})`,
        );
      } else if (opts.verbose) {
        console.log(
          `  ${sources[i].slice(ROOT.length)}: ${((performance.now() - t0) / 1000).toFixed(1)} s`,
        );
      }
    }),
  );
  if (failed) Deno.exit(1);

  // The per-source reports, merged, and a summary of anything that spills.
  const merged: string[] = [];
  for (const r of reports) merged.push(await Deno.readTextFile(r).catch(() => ""));
  await Deno.writeTextFile(PTXAS, merged.join("\n"));
  const spills = merged.join("\n").split("\n").filter((l) => /[1-9]\d* bytes spill/.test(l));
  if (spills.length > 0) {
    console.warn(
      `build.ts: warning: ${spills.length} kernel(s) spill registers; see ${
        PTXAS.slice(ROOT.length)
      }`,
    );
  }

  let newestObj = 0;
  for (const o of objects) newestObj = Math.max(newestObj, await mtime(o));
  if ((await mtime(LIB)) > newestObj && stale.length === 0) {
    console.log(`${LIB.slice(ROOT.length)} is up to date`);
  } else {
    await link(nvcc, objects);
  }
  if (opts.tests) {
    await buildTests(nvcc);
    await buildFabricProbe(nvcc);
  }
}

/** bench/fabric_probe.cu: the NVLink rates of every way to move bytes (no engine; sm_90 only, for its bulk copies). */
async function buildFabricProbe(nvcc: string): Promise<void> {
  const src = `${ROOT}bench/fabric_probe.cu`;
  const exe = `${OUT}/fabric_probe`;
  if ((await mtime(exe)) > (await mtime(src))) {
    console.log(`${exe.slice(ROOT.length)} is up to date`);
    return;
  }
  const args = ["-O3", "-std=c++17", "-Xcompiler", "-Wall,-Wextra", "-arch=sm_90", src, "-o", exe];
  await produce(nvcc, args, "building", exe);
}

async function buildTests(nvcc: string): Promise<void> {
  const src = `${ROOT}native/tests/engine_test.cpp`;
  const exe = `${OUT}/weft_engine_test`;
  if (
    (await mtime(exe)) >
      Math.max(await mtime(src), await mtime(LIB), await mtime(`${INCLUDE}/weft.h`))
  ) {
    console.log(`${exe.slice(ROOT.length)} is up to date`);
    return;
  }
  const args = [
    "-O2",
    "-std=c++17",
    "-Xcompiler",
    "-Wall,-Wextra,-ffp-contract=off",
    src,
    "-o",
    exe,
    `-L${OUT}`,
    "-lweft",
    "-Xlinker",
    "-rpath,$ORIGIN",
  ];
  await produce(nvcc, args, "building", exe);
}

async function link(nvcc: string, objects: string[]): Promise<void> {
  const linkArgs = [
    "-shared",
    "--cudart",
    "static",
    "-gencode",
    "arch=compute_90,code=sm_90",
    "-gencode",
    "arch=compute_80,code=sm_80",
    "-o",
    LIB,
    ...objects,
    "-Xlinker",
    `--version-script=${SRC}/exports.map`,
    "-Xcompiler",
    "-static-libstdc++,-static-libgcc",
    "-ldl",
    "-lpthread",
    "-lrt",
  ];
  await produce(nvcc, linkArgs, "linking", LIB);
}

/** Runs one nvcc step that makes `product`, echoing the command and its output; exits on failure. */
async function produce(nvcc: string, args: string[], step: string, product: string): Promise<void> {
  console.log(show(nvcc, args));
  const r = await run(nvcc, args);
  if (r.stdout.trim()) console.log(r.stdout.trim());
  if (r.stderr.trim()) console.error(r.stderr.trim());
  if (r.code !== 0) {
    console.error(`build.ts: ${step} ${product.slice(ROOT.length)} failed (exit ${r.code})`);
    Deno.exit(1);
  }
  console.log(`built ${product.slice(ROOT.length)}`);
}

if (import.meta.main) await main();
