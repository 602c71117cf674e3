/**
 * The pod annotation that says which NAA driver a pod has, `Sidecar` or `Node` (docs/naa.md): the
 * webhook sets it at admission (a pod may ask for either by setting it itself), the operator lists
 * the pods that say `Node` in their node's NodeConfig for its node agent to drive, and a gateway
 * agent takes a node-driven stream only for a pod that says `Node`.
 */
export const driverAnnotation = 'naat.dev/association-driver';
