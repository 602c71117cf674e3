/**
 * Runs `work` on the items in their order, at most `limit` at once. After a failure no further
 * item is started; once those under way have ended, the first failure is thrown.
 */
export async function eachAtMost<T>(
  items: Iterable<T>,
  limit: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  const iterator = items[Symbol.iterator]();
  const failures: unknown[] = [];
  const worker = async () => {
    for (let next = iterator.next(); !next.done && !failures.length; next = iterator.next()) {
      await work(next.value).catch((error: unknown) => void failures.push(error));
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
  if (failures.length) throw failures[0];
}
