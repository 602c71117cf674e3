// How an agent gets its node's certificate, as the agents and the operator's signer both know it:
// a CertificateSigningRequest (certificates.k8s.io/v1) to this signer, with these usages and a
// PKCS#10 request whose subject is the node's name alone; the CA that signs it, published in the
// release's CA ConfigMap under `caBundleKey`; and the files an agent keeps in its TLS directory.

/** The signer of the agents' certificates, which the operator's leader runs. */
export const agentSignerName = 'naat.dev/agent';

/** The usages of an agent's certificate: a TLS server, and a TLS client of other agents. */
export const agentUsages: readonly string[] = ['digital signature', 'server auth', 'client auth'];

/** The key of the CA ConfigMap holding the CA bundle (PEM), and of the same file in a TLS directory. */
export const caBundleKey = 'ca.crt';

/** The files of an agent's TLS directory (--tls-dir). */
export const tlsFiles = { ca: caBundleKey, cert: 'tls.crt', key: 'tls.key' } as const;
