import { namespaceTerminating } from './request.ts';

// The Status the apiserver sends when a create lands in a namespace being deleted.
const terminating = {
  kind: 'Status',
  status: 'Failure',
  reason: 'Forbidden',
  details: { causes: [{ reason: 'NamespaceTerminating', field: 'metadata.namespace' }] },
  code: 403,
};

test('a 403 naming the NamespaceTerminating cause is a namespace being deleted, as text or parsed', () => {
  expect(namespaceTerminating({ code: 403, body: JSON.stringify(terminating) })).toBe(true);
  expect(namespaceTerminating({ code: 403, body: terminating })).toBe(true);
});

test('any other refusal is not', () => {
  const rbac = { ...terminating, details: { kind: 'events' } };
  expect(namespaceTerminating({ code: 403, body: JSON.stringify(rbac) })).toBe(false);
  expect(namespaceTerminating({ code: 404, body: JSON.stringify(terminating) })).toBe(false);
  expect(namespaceTerminating({ code: 403, body: 'not json' })).toBe(false);
  expect(namespaceTerminating(undefined)).toBe(false);
});
