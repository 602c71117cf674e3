// Strict mode for a node-driven pod (docs/naa.md): the pod's first init container, from the
// sidecar's image. There is no sidecar to place the stamping library in the folder the pod's
// containers share and to answer their programs: this places the library, then waits until the
// agent that drives the pod (the node agent, or on a gateway node the gateway agent) answers on
// the folder's stamp socket, so that the kubelet starts
// the pod's programs only then and their first connect() is stamped. It never holds the pod back
// for good: after NAAT_STAMP_WAIT_MS (30,000) it lets the pod start, and each program's flows go
// unstamped (Observe mode's handling) while no agent answers.
// Configured by environment (the admission webhook sets them):
//   NAAT_STAMP_DIR       the folder shared with the pod's programs (required)
//   NAAT_STAMP_LIBRARY   the built library (default stamp/libnaat_stamp.so beside this file)
//   NAAT_STAMP_WAIT_MS   how long to wait for the agent (default 30000)
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { jsonLogger as log, parseCommandLine } from '../common/index.ts';
import { sidecarVariables, stampSocketName } from '../contracts/index.ts';
import { placeLibrary } from './stamps.ts';

parseCommandLine(
  `usage: node sidecar/stamp-init.js; it takes no arguments, only these variables:
  NAAT_STAMP_DIR, NAAT_STAMP_LIBRARY, NAAT_STAMP_WAIT_MS   (the head of sidecar/stamp-init.ts describes each)`,
  { options: {} },
);

const dir = process.env[sidecarVariables.stampDir];
if (!dir) {
  log.error(`Missing environment variable ${sidecarVariables.stampDir}`);
  process.exit(2);
}
const waitMs = Number(process.env.NAAT_STAMP_WAIT_MS ?? 30_000);

/** Whether the stamp socket answers: a request that names no process gets 0, and proves the socket is served. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection(path, () => socket.write('0\n'));
    let text = '';
    socket.setTimeout(1_000, () => socket.destroy());
    socket.on('data', (chunk) => (text += chunk));
    socket.on('close', () => resolve(text.endsWith('\n')));
    socket.on('error', () => socket.destroy());
  });
}

placeLibrary(process.env.NAAT_STAMP_LIBRARY ?? join(import.meta.dirname, 'stamp', 'libnaat_stamp.so'), dir);
const path = join(dir, stampSocketName);
const deadline = Date.now() + waitMs;
while (!(await answers(path))) {
  if (Date.now() >= deadline) {
    log.warn('No agent answers for stamps: the pod starts, and its programs go unstamped until one does', {
      waitMs,
    });
    process.exit(0);
  }
  await sleep(100);
}
log.info('The agent answers for stamps', { path });
