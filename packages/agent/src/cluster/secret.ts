// Secret bytes (TLS private keys) in the cluster model: wrapped so that a snapshot that is logged, inspected or
// serialised by accident shows no key material.

/**
 * Secret bytes that do not show up when logged, inspected or JSON-serialised by accident; `reveal()` is the one way
 * to read them (the TLS context builder).
 */
export class SecretMaterial {
  readonly #bytes: Buffer;
  constructor(bytes: Buffer) {
    this.#bytes = bytes;
  }

  reveal(): Buffer {
    return this.#bytes;
  }

  get length(): number {
    return this.#bytes.length;
  }

  toJSON(): string {
    return '[redacted]';
  }

  toString(): string {
    return '[redacted]';
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return 'SecretMaterial [redacted]';
  }
}
