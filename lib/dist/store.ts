/**
 * The rendezvous store: a small TCP key-value server that the launcher hosts
 * and every rank reaches through `WEFT_STORE`, so that ranks can exchange the
 * NCCL unique id and CUDA IPC handles before any GPU transport exists.
 *
 * One TCP connection per client; requests may be in flight concurrently and
 * are answered by id, possibly out of order. The wire format is in
 * `store_protocol.ts`, the server in `store_server.ts`, the client in
 * `store_client.ts`; this module re-exports them.
 *
 * Security and bounds:
 * - Every connection must first present the job's secret (the launcher
 *   generates one per job and passes it to its ranks as `WEFT_STORE_SECRET`;
 *   compared in constant time). A wrong or missing secret is refused and the
 *   connection closed before anything is stored.
 * - The server enforces {@link StoreLimits} (defaults in
 *   {@link DEFAULT_STORE_LIMITS}): 64 MiB frames, 4096 connections, 10 s to
 *   authenticate, 30 s to finish a started frame, 256 MiB of queued replies
 *   per connection, 4096 pending waits per connection, 2^20 keys, 1 GiB
 *   stored, 15 min per wait (the launcher uses the job's `--timeout`).
 *   Closing the server frees every key; clients may also delete keys.
 *
 * A GET waits on the server until every key is present, so a waiting rank
 * costs no polling; the server bounds every wait, and the client bounds it
 * again in case the server itself is gone.
 *
 * @example
 * ```ts
 * import { StoreClient, StoreServer } from "./store.ts";
 * await using server = StoreServer.listen({ secret: "job-secret" });
 * using client = await StoreClient.connect(server.address, { secret: "job-secret" });
 * await client.set("k", new Uint8Array([1]));
 * console.assert((await client.deletePrefix("k")) === 1);
 * ```
 *
 * @module
 */
export { StoreServer, type StoreServerOptions, type StoreStats } from "./store_server.ts";
export { DEFAULT_STORE_TIMEOUT_MS, StoreClient, type StoreClientOptions } from "./store_client.ts";
export { DEFAULT_STORE_LIMITS, type StoreLimits } from "./store_protocol.ts";
