// The dataplane's entry point for its clients (the naat CLI): the explanation of a flow from a
// compiled config, which needs no kernel, and the shapes of what an agent serves over HTTP
// (/status, /flows, /attribution), which clients read as JSON, with the attribution query's
// parser and the address:port notation the agent uses.
export { explainFlow, type Explanation, type FlowQuestion } from './explain.ts';
export type { AgentReport, UplinkReport } from './agent-report.ts';
export type { AttributedFlow } from './agent.ts';
export { endpoint, parseAttributionQuery, type AttributionQuery, type AttributionRecord } from './attribution.ts';
