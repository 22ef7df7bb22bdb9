// Test-side entry point of the network-namespace lab; the implementation is product code shared with `edgemesh demo`.
export * from '../../packages/lab/src/netlab.ts';
export { Probe, type ProbeEvent } from './probe.ts';
