// The NAA protocol's public entry point: messages, their codecs, and the gRPC service.
export * from './generated/naat/naa/v1/naa.ts';
