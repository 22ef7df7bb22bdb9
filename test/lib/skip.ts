// Skips that may happen in CI. test/run.ts fails a CI run (CI=true) on any skipped test or suite whose reason does not
// start with ALLOWED_IN_CI, and lists the allowed ones with their reasons. Use it only for what CI cannot provide
// (e.g. no helm binary); a root-only test must not skip in CI, where it runs as root.
//   describe('helm template', { skip: !helm && allowedInCi('no helm binary') }, ...)
//   test('x', (t) => { if (!tool) return t.skip(allowedInCi('no tool')); ... })

export const ALLOWED_IN_CI = 'allowed-in-ci: ';

/** A skip reason that CI accepts: `allowed-in-ci: <reason>`. */
export function allowedInCi(reason: string): string {
  if (!reason.trim()) throw new Error('allowedInCi: a reason is required');
  return `${ALLOWED_IN_CI}${reason}`;
}

/** The reason behind an allowed skip message, or undefined when the message does not allow the skip in CI. */
export function allowedReason(message: string | boolean | undefined): string | undefined {
  return typeof message === 'string' && message.startsWith(ALLOWED_IN_CI) ? message.slice(ALLOWED_IN_CI.length) : undefined;
}
