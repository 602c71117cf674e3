// The environment the admission webhook gives an injected sidecar and the containers of its pod,
// and that the sidecar reads: one spelling for the side that writes it and the side that reads it.

/** The variables the webhook sets in the sidecar container. */
export const sidecarVariables = {
  /** The node's address (status.hostIP), where the gateway's NAA server listens. */
  naaHost: 'NAAT_NAA_HOST',
  /** The gateway's association port. */
  naaPort: 'NAAT_NAA_PORT',
  /**
   * The CA bundle (PEM) that issued the agents' certificates: the sidecar verifies its node's
   * agent with it (an IP SAN for the node's address). Without it the stream is plaintext.
   */
  naaCa: 'NAAT_NAA_CA',
  podNamespace: 'NAAT_POD_NAMESPACE',
  podName: 'NAAT_POD_NAME',
  podUid: 'NAAT_POD_UID',
  /** The projected service-account token with the naat audience. */
  tokenFile: 'NAAT_TOKEN_FILE',
  /** Strict mode: the folder the sidecar shares with the pod's programs. */
  stampDir: 'NAAT_STAMP_DIR',
} as const;

/** The variable the webhook sets in every container of a selected pod to its container's name. */
export const containerNameVariable = 'NAAT_CONTAINER_NAME';

/** The pod volume that holds its token for the naat audience, which the sidecar mounts. */
export const tokenVolume = 'naat-token';

/**
 * Strict mode: the folder every container of the pod mounts (an emptyDir), where the stamping
 * library is placed and its driver (the sidecar, or the node agent of a node-driven pod) listens
 * on the socket the library asks on.
 */
export const stampFolder = '/var/run/naat';
export const stampSocketName = 'stamp.sock';
export const stampLibraryName = 'libnaat_stamp.so';
