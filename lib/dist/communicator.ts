/**
 * A communicator: this process's rank in a world of GPU processes, with its
 * symmetric heap mapped into every peer (CUDA IPC) and, optionally, an NCCL
 * communicator. Creation is collective: every rank calls
 * {@link Communicator.create} (or {@link Communicator.fromEnv}) at the same
 * point of its program.
 *
 * Rendezvous goes through the TCP store (lib/store.ts): rank 0 publishes the
 * NCCL unique id, then every rank publishes its heap's IPC handle and maps
 * those of the other ranks of its node. Over several nodes (`localWorld` <
 * `world`) the heap is shared only inside the node and an NCCL communicator
 * over the whole world carries the rows between nodes.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { holding, readPointer, UNIQUE_ID_BYTES } from "../native/pointers.ts";
import { native } from "../native/loader.ts";
import { unwrap } from "../native/status.ts";
import { deviceCount, requireNccl } from "../native/device.ts";
import { DEFAULT_STORE_TIMEOUT_MS, StoreClient } from "./store.ts";
import { readLaunchEnv } from "./env.ts";
import { exchangeIpcHandles, topology } from "./communicator_topology.ts";

/** Default symmetric heap per rank when the caller does not say (`heapBytes`). */
export const DEFAULT_HEAP_BYTES = 1 << 30;

/** What {@link Communicator.create} needs. */
export interface CommunicatorOptions {
  /** This process's rank, 0 ≤ rank < world. */
  readonly rank: number;
  /** Number of ranks (processes, one GPU each). */
  readonly world: number;
  /**
   * This rank's index inside its node (LOCAL_RANK), and the CUDA device it
   * drives unless `device` says otherwise.
   */
  readonly localRank: number;
  /** The CUDA device this rank drives (the launcher's WEFT_DEVICE); default `localRank`. */
  readonly device?: number;
  /**
   * Ranks per node (LOCAL_WORLD_SIZE), at most 32; nodes are consecutive
   * ranks. Default `world` (one node). With fewer than `world` an NCCL
   * communicator is always created, and `localRank` must be `rank % localWorld`.
   */
  readonly localWorld?: number;
  /** This rank's node (NODE_RANK); checked against `⌊rank / localWorld⌋` when given. */
  readonly nodeRank?: number;
  /** The rendezvous store: a connected client, or its `host:port`. */
  readonly store: StoreClient | string;
  /** Bound on every wait for peers, in the store and on the GPU (default 60 s). */
  readonly timeoutMs?: number;
  /**
   * Bytes of this rank's symmetric heap (identical on every rank). Default
   * 1 GiB. `Engine.heapBytes(plan, …)` says what a plan needs.
   */
  readonly heapBytes?: number;
  /** Also create an NCCL communicator (needed by the baseline and multi-node paths). */
  readonly nccl?: boolean;
  /**
   * Names this communicator's keys in the store. Ranks must agree; the
   * default counts communicators created in this process, which agrees when
   * every rank creates them in the same order.
   */
  readonly name?: string;
}

interface Liveness {
  address: bigint;
}

const leaks = new FinalizationRegistry<Liveness>((h) => {
  try {
    native().weft_comm_destroy(Deno.UnsafePointer.create(h.address));
  } catch { /* process exit */ }
});

let created = 0;

/**
 * A rank's membership in a GPU world. Close it (or `using`) after every
 * engine built on it; closing it closes those engines first.
 *
 * @example
 * ```ts ignore
 * import { Communicator } from "./communicator.ts";
 * // In a script started by `deno task launch --gpus 4 script.ts`:
 * await using comm = await Communicator.fromEnv();
 * await comm.barrier();
 * ```
 */
export class Communicator implements AsyncDisposable {
  /** This process's rank. */
  readonly rank: number;
  /** Number of ranks. */
  readonly world: number;
  /** This rank's index inside its node (the CUDA device too, unless `device` was given). */
  readonly localRank: number;
  /** The CUDA device index this rank drives. */
  readonly device: number;
  /** Ranks per node (the heap is shared among them over CUDA IPC). */
  readonly localWorld: number;
  /** This rank's node. */
  readonly nodeRank: number;
  /** Number of nodes (`world / localWorld`). */
  readonly nodes: number;
  /** Bound on every wait for peers. */
  readonly timeoutMs: number;
  /** Bytes of this rank's symmetric heap. */
  readonly heapBytes: number;
  /** True when an NCCL communicator exists. */
  readonly nccl: boolean;
  /** The store, kept for later rendezvous (e.g. barriers on the host). */
  readonly store: StoreClient;
  readonly #name: string;
  readonly #ownsStore: boolean;
  #handle: Deno.PointerValue;
  // Weak: an engine nobody references may still be collected (its own backstop frees it).
  readonly #dependents = new Set<WeakRef<{ close(): void }>>();
  #barriers = 0;

  private constructor(
    options: Required<Omit<CommunicatorOptions, "store" | "name" | "nodeRank">>,
    store: StoreClient,
    ownsStore: boolean,
    name: string,
    handle: Deno.PointerValue,
  ) {
    this.rank = options.rank;
    this.world = options.world;
    this.localRank = options.localRank;
    this.device = options.device;
    this.localWorld = options.localWorld;
    this.nodeRank = Math.floor(options.rank / options.localWorld);
    this.nodes = options.world / options.localWorld;
    this.timeoutMs = options.timeoutMs;
    this.heapBytes = options.heapBytes;
    this.nccl = options.nccl;
    this.store = store;
    this.#ownsStore = ownsStore;
    this.#name = name;
    this.#handle = handle;
    leaks.register(this, { address: Deno.UnsafePointer.value(handle!) }, this);
  }

  /**
   * Creates this rank's communicator; every rank of the world must call it.
   * Fails with a WeftError (never hangs) when a peer does not show up within
   * `timeoutMs`, when there is no GPU, or when NCCL is asked for but missing.
   */
  static async create(options: CommunicatorOptions): Promise<Communicator> {
    const { rank, world, localRank } = options;
    const timeoutMs = options.timeoutMs ?? DEFAULT_STORE_TIMEOUT_MS;
    const heapBytes = options.heapBytes ?? DEFAULT_HEAP_BYTES;
    checkInt("rank", rank, 0, world - 1);
    checkInt("world", world, 1, Number.MAX_SAFE_INTEGER);
    checkInt("timeoutMs", timeoutMs, 1, 2 ** 31 - 1);
    checkInt("heapBytes", heapBytes, 1, Number.MAX_SAFE_INTEGER);
    const topo = topology(options);
    const { localWorld, nodes } = topo;
    // Several nodes: rows cross between them over NCCL.
    const nccl = (options.nccl ?? false) || nodes > 1;
    const device = options.device ?? localRank;
    const devices = deviceCount();
    if (!Number.isInteger(device) || device < 0 || device >= devices) {
      throw new WeftError({
        field: options.device === undefined ? "localRank" : "device",
        rank,
        problem: `is ${device}, but this process sees ${devices} GPU${devices === 1 ? "" : "s"}`,
        fix:
          "launch at most one process per visible GPU (deno task launch --gpus N, or --ranks-per-gpu k), and leave CUDA_VISIBLE_DEVICES unset or listing them all",
      });
    }
    if (nccl) requireNccl();

    const ownsStore = typeof options.store === "string";
    const store = typeof options.store === "string"
      ? await StoreClient.connect(options.store, { rank, connectTimeoutMs: timeoutMs })
      : options.store;
    const name = options.name ?? `weft/comm/${created++}`;
    let handle: Deno.PointerValue = null;
    try {
      const ncclId = nccl ? await shareNcclId(store, name, rank, timeoutMs) : null;
      // NCCL init inside weft_comm_create waits for every rank without a
      // bound; meeting here first means a rank that died before it is
      // reported as a missing peer instead of a hang.
      await store.barrier(`${name}/ready`, world, timeoutMs, rank);
      const out = new BigUint64Array(1);
      unwrap(
        await holding(
          [ncclId, out],
          () =>
            nodes > 1
              ? native().weft_comm_create2(
                device,
                rank,
                world,
                localRank,
                localWorld,
                ncclId,
                BigInt(heapBytes),
                timeoutMs,
                out,
              )
              : native().weft_comm_create(
                device,
                rank,
                world,
                ncclId,
                BigInt(heapBytes),
                timeoutMs,
                out,
              ),
        ),
        nodes > 1 ? "weft_comm_create2" : "weft_comm_create",
        { rank, field: "heapBytes" },
      );
      handle = readPointer(out);
      const handles = await exchangeIpcHandles(store, name, handle, rank, topo, timeoutMs);
      const opened = await holding([handles], () => native().weft_comm_open_peers(handle, handles));
      unwrap(opened, "weft_comm_open_peers", { rank });
      return new Communicator(
        { rank, world, localRank, device, localWorld, timeoutMs, heapBytes, nccl },
        store,
        ownsStore,
        name,
        handle,
      );
    } catch (error) {
      if (handle !== null) native().weft_comm_destroy(handle);
      if (ownsStore) store.close();
      throw error;
    }
  }

  /**
   * Creates the communicator of a process started by `deno task launch`,
   * from RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK,
   * WEFT_DEVICE, WEFT_STORE and WEFT_TIMEOUT_MS; `options` override.
   */
  static fromEnv(
    options: Partial<Omit<CommunicatorOptions, "store">> & {
      readonly store?: StoreClient | string;
    } = {},
  ): Promise<Communicator> {
    const env = readLaunchEnv();
    return Communicator.create({
      rank: env.rank,
      world: env.world,
      localRank: env.localRank,
      localWorld: env.localWorld,
      nodeRank: env.nodeRank,
      device: env.device,
      store: env.store,
      ...(env.timeoutMs !== undefined ? { timeoutMs: env.timeoutMs } : {}),
      ...options,
    });
  }

  /** The native handle, for weft's engines; throws once closed. */
  get nativeHandle(): Deno.PointerValue {
    return this.#open();
  }

  #open(): Deno.PointerValue {
    if (this.#handle === null) {
      throw new WeftError({
        field: "communicator",
        rank: this.rank,
        problem: "is closed",
        fix: "close engines and the communicator only after the last collective call",
      });
    }
    return this.#handle;
  }

  /** A bounded barrier on the GPU (through the symmetric heap's flags). */
  async barrier(): Promise<void> {
    unwrap(await native().weft_comm_barrier(this.nativeHandle), "weft_comm_barrier", {
      rank: this.rank,
    });
  }

  /**
   * Waits for the GPU work that the last engine call queued and returns (see
   * Engine: dispatch and combine return while their rows still move) and
   * throws the WeftError of that work's failure, e.g. a peer that died
   * mid-combine. Not collective.
   */
  async synchronize(): Promise<void> {
    unwrap(await native().weft_comm_sync(this.nativeHandle), "weft_comm_sync", {
      rank: this.rank,
    });
  }

  /** A bounded barrier through the store (works even when the GPU path is broken). */
  hostBarrier(): Promise<void> {
    return this.store.barrier(
      `${this.#name}/barrier/${this.#barriers++}`,
      this.world,
      this.timeoutMs,
      this.rank,
    );
  }

  /**
   * @internal Engines register so that closing the communicator closes them
   * first; the returned function unregisters.
   */
  adopt(dependent: { close(): void }): () => void {
    this.#open();
    const ref = new WeakRef(dependent);
    this.#dependents.add(ref);
    return () => this.#dependents.delete(ref);
  }

  /**
   * Closes dependent engines, the native communicator and a store it opened
   * itself. Collective once peers are mapped: native waits (at most
   * `timeoutMs`) until every rank closes, so no peer still reads this heap.
   */
  close(): void {
    if (this.#handle === null) return;
    for (const d of [...this.#dependents]) d.deref()?.close();
    this.#dependents.clear();
    const handle = this.#handle;
    this.#handle = null;
    leaks.unregister(this);
    try {
      unwrap(native().weft_comm_destroy(handle), "weft_comm_destroy", { rank: this.rank });
    } finally {
      if (this.#ownsStore) this.store.close();
    }
  }

  /** Closes (see {@link Communicator.close}) and waits for the store connection to end. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return this.#ownsStore ? this.store.closed : Promise.resolve();
  }
}

async function shareNcclId(
  store: StoreClient,
  name: string,
  rank: number,
  timeoutMs: number,
): Promise<Uint8Array> {
  const key = `${name}/nccl-id`;
  if (rank === 0) {
    const id = new Uint8Array(UNIQUE_ID_BYTES);
    unwrap(native().weft_nccl_unique_id(id), "weft_nccl_unique_id", { rank });
    await store.set(key, id);
    return id;
  }
  const id = await store.get(key, timeoutMs);
  if (id.length !== UNIQUE_ID_BYTES) {
    throw new WeftError({
      field: "peer",
      rank: 0,
      problem: `published an NCCL id of ${id.length} bytes, not ${UNIQUE_ID_BYTES}`,
      fix: "run the same weft version on every rank",
    });
  }
  return id;
}

function checkInt(field: string, v: number, min: number, max: number): void {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new WeftError({
      field,
      problem: `is ${v}`,
      fix: `pass an integer in [${min}, ${max}]`,
    });
  }
}
