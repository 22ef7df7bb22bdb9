// A TCP port free on 127.0.0.1 right now (bound to port 0, then released): for servers whose port must be known
// before they start (mesh peers naming each other).
import { createServer } from 'node:net';

export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}
