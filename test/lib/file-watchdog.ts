// Loaded into every test file's process by test/run.ts (--import): a test file that is still running after
// EDGEMESH_TEST_FILE_TIMEOUT_MS (a hung top-level await, a handle left open after its tests, a test that ignores its
// timeout) is killed with a line the runner recognises, so it fails the run by name instead of hanging it.
// The timer is unref'd: it never keeps a finished file alive.
import { WATCHDOG_MARK } from './run-summary.ts';

/** Exit code of a file the watchdog killed (as timeout(1)). */
const WATCHDOG_EXIT_CODE = 124;
const ms = Number(process.env.EDGEMESH_TEST_FILE_TIMEOUT_MS);
if (Number.isFinite(ms) && ms > 0) {
  setTimeout(() => {
    process.stderr.write(`\n${WATCHDOG_MARK} ${ms} ms: killed\n`);
    process.exit(WATCHDOG_EXIT_CODE);
  }, ms).unref();
}
