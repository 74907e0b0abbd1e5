/**
 * The store server's pending waits: GETs parked until their keys arrive or
 * their time runs out, indexed by missing key.
 *
 * @module
 */

/** One parked GET. */
export interface Wait<Owner> {
  /** The keys asked for, in request order. */
  readonly keys: readonly string[];
  /** Those not yet present. */
  readonly missing: Set<string>;
  /** Whether the reply carries the values. */
  readonly withValues: boolean;
  /** The request id to answer. */
  readonly id: number;
  /** The connection that asked. */
  readonly owner: Owner;
  /** How long the wait may last (already clamped by the server). */
  readonly waitMs: number;
}

/** What the table calls back when a wait ends. */
export interface WaitCallbacks<Owner> {
  /** Every key is present: answer it. */
  readonly ready: (wait: Wait<Owner>) => void;
  /** Its time ran out: report `wait.missing`. */
  readonly expired: (wait: Wait<Owner>) => void;
  /** It ended in any way (answered, expired or dropped). */
  readonly settled: (wait: Wait<Owner>) => void;
}

/** Parked waits by missing key, each with its timer. */
export class WaitTable<Owner> {
  readonly #byKey = new Map<string, Set<Wait<Owner>>>();
  readonly #timers = new Map<Wait<Owner>, ReturnType<typeof setTimeout>>();

  /** Calls `callbacks` as waits end. */
  constructor(readonly callbacks: WaitCallbacks<Owner>) {}

  /** Waits parked now. */
  get size(): number {
    return this.#timers.size;
  }

  /** Parks `wait` (whose `missing` is not empty) until its keys arrive or it expires. */
  add(wait: Wait<Owner>): void {
    this.#timers.set(
      wait,
      setTimeout(() => {
        this.#remove(wait);
        this.callbacks.expired(wait);
      }, wait.waitMs),
    );
    for (const key of wait.missing) {
      let set = this.#byKey.get(key);
      if (set === undefined) this.#byKey.set(key, set = new Set());
      set.add(wait);
    }
  }

  /** `key` was stored: answers every wait it completes. */
  arrived(key: string): void {
    const set = this.#byKey.get(key);
    if (set === undefined) return;
    this.#byKey.delete(key);
    for (const wait of set) {
      wait.missing.delete(key);
      if (wait.missing.size > 0) continue;
      this.#remove(wait);
      this.callbacks.ready(wait);
    }
  }

  /** Drops every wait of `owner` (its connection closed) without answering. */
  dropOwnedBy(owner: Owner): void {
    for (const wait of [...this.#timers.keys()]) {
      if (wait.owner === owner) this.#remove(wait);
    }
  }

  /** Drops every wait without answering. */
  clear(): void {
    for (const wait of [...this.#timers.keys()]) this.#remove(wait);
  }

  #remove(wait: Wait<Owner>): void {
    const timer = this.#timers.get(wait);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.#timers.delete(wait);
    for (const key of wait.missing) {
      const set = this.#byKey.get(key);
      set?.delete(wait);
      if (set?.size === 0) this.#byKey.delete(key);
    }
    this.callbacks.settled(wait);
  }
}
