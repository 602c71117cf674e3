// The driver side of network application association, shared by its two drivers: the sidecar in a
// pod and the node agent for every pod of its node (docs/naa.md). Its own entry point, apart from
// contracts/index.ts, so that what only needs the contracts does not load gRPC.
export { diffAssociations, flowKey, flowOf, outboundSockets } from './associations.ts';
export type { Association, AssociationChanges, Flow } from './associations.ts';
export { Driver, flowKey as protoFlowKey } from './driver.ts';
export type { AssociateStream, AssociationSpan, AssociationTracer, DriverOptions, DriverState } from './driver.ts';
export { nodeTcpSockets, parseSocketTable, tcpChangeMarker, tcpState } from './proc-net.ts';
export type { SocketEntry, Transport } from './proc-net.ts';
export { allPids, containerIdFromCgroup, podOfCgroup, readApplication, socketOwners } from './processes.ts';
export type { PodPlace } from './processes.ts';
export { ProcFile } from './proc-file.ts';
export { Scanner } from './scanner.ts';
export type { Owners } from './scanner.ts';
export { identityOf, maxStamp, parseStampRequest, Stamps } from './stamps.ts';
export type { StampRequest, StampsOptions } from './stamps.ts';
