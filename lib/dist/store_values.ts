/**
 * The store server's key-value table, with its count and byte limits.
 *
 * @module
 */

/** Keys and values held by a store server, bounded by `maxKeys` and `maxStoredBytes`. */
export class ValueTable {
  readonly #values = new Map<string, Uint8Array>();
  #bytes = 0;

  /** An empty table with these limits. */
  constructor(readonly maxKeys: number, readonly maxStoredBytes: number) {}

  /** Keys held. */
  get size(): number {
    return this.#values.size;
  }

  /** Key and value bytes held (keys counted at 2 bytes a UTF-16 unit, a cheap upper bound). */
  get bytes(): number {
    return this.#bytes;
  }

  /** The value of `key`, if held. */
  get(key: string): Uint8Array | undefined {
    return this.#values.get(key);
  }

  /** Whether `key` is held. */
  has(key: string): boolean {
    return this.#values.has(key);
  }

  /** Stores `value`; returns why not when a limit forbids it, else undefined. */
  set(key: string, value: Uint8Array): string | undefined {
    const old = this.#values.get(key);
    if (old === undefined && this.#values.size >= this.maxKeys) {
      return `the store holds ${this.#values.size} keys, its limit (maxKeys); delete keys no longer needed`;
    }
    const after = this.#bytes + value.length + (old === undefined ? key.length * 2 : -old.length);
    if (after > this.maxStoredBytes) {
      return `storing ${value.length} bytes would exceed the store's limit of ${this.maxStoredBytes} bytes (maxStoredBytes); delete keys no longer needed`;
    }
    this.#values.set(key, value);
    this.#bytes = after;
    return undefined;
  }

  /** Removes `names` (or every key starting with one of them); returns how many went. */
  delete(names: readonly string[], byPrefix: boolean): number {
    const doomed = byPrefix
      ? [...this.#values.keys()].filter((key) => names.some((p) => key.startsWith(p)))
      : names;
    let removed = 0;
    for (const key of doomed) {
      const value = this.#values.get(key);
      if (value === undefined) continue;
      this.#values.delete(key);
      this.#bytes -= value.length + key.length * 2;
      removed++;
    }
    return removed;
  }

  /** Frees everything. */
  clear(): void {
    this.#values.clear();
    this.#bytes = 0;
  }
}
