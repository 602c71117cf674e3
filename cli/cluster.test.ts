import { errorStream, localPortOf } from './cluster.ts';

test("an agent's loopback port is read from its container's --local-listen", () => {
  expect(localPortOf(['run', '--listen', ':9091', '--local-listen', '127.0.0.1:9095', '--report'])).toBe(9095);
  expect(localPortOf(['run', '--listen', ':9091'])).toBeUndefined();
});

test("the port-forward's error stream reports what the kubelet wrote, not the empty frame of its port number", async () => {
  const errors: string[] = [];
  const stream = errorStream((text) => errors.push(text));
  stream.write(Buffer.alloc(0));
  stream.write(Buffer.from('failed to connect to localhost:9095: connection refused'));
  await new Promise<void>((resolve) => stream.end(resolve));
  expect(errors).toEqual(['failed to connect to localhost:9095: connection refused']);
});
