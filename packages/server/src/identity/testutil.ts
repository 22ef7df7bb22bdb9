// Test helpers for the enrollment tests: a node with a key that signs enrollment proofs.
import { createHash, randomBytes } from 'node:crypto';
import { signWithContext } from '@edgemesh/common/identity/keys';
import { nodeKey, type TestNodeKey } from '@edgemesh/common/identity/testca';
import { ENROLL_PROOF_CONTEXT, enrollProofMessage } from './decide.ts';
import type { EnrollRequest } from './enroller.ts';
import type { EnrollMethod } from './registry.ts';

export interface TestNode extends TestNodeKey {
  readonly name: string;
  /** An enrollment request for `binding`, signed with this node's key. */
  request(method: EnrollMethod | 'renew', token: string, binding: Buffer, name?: string): EnrollRequest;
}

export function testNode(name: string, key: TestNodeKey = nodeKey()): TestNode {
  return {
    ...key,
    name,
    request(method, token, binding, claimed = name) {
      return { name: claimed, publicKey: key.publicKey, method, token, signature: signWithContext(key.privateKey, ENROLL_PROOF_CONTEXT, enrollProofMessage(binding, method, claimed)) };
    },
  };
}

export const newBinding = (): Buffer => randomBytes(32);
export const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();
