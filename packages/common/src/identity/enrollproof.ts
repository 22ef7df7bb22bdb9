// The enrollment proof both sides compute: the node key signs ENROLL_PROOF_CONTEXT || enrollProofMessage(...).
// Shared by the agent (signs) and the server's decideEnrollment (verifies).

/** Context of the key-possession proof. */
export const ENROLL_PROOF_CONTEXT = 'edgemesh enrollment proof v1\0';

/**
 * What the node key signs: the channel binding (TLS exported keying material of this connection, so the proof cannot
 * be replayed on another connection), the method and the name.
 */
export function enrollProofMessage(binding: Uint8Array, method: string, name: string): Buffer {
  return Buffer.concat([Buffer.from([binding.length]), binding, Buffer.from(`${method}\0${name}`, 'latin1')]);
}
