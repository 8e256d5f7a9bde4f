// Node-RED settings for benchmarks/peers.py: a headless runtime that only runs the generated flow.
// The flow file and the listening port come from the environment set by the harness.
module.exports = {
    flowFile: process.env.CELLGATE_BENCH_FLOW_FILE || "flows.json",
    credentialSecret: false,
    uiHost: "127.0.0.1",
    uiPort: Number(process.env.CELLGATE_BENCH_NODE_RED_PORT || 0),
    // No editor and no HTTP nodes: the runtime's cost is the flow's, not the editor's.
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    logging: {
        console: { level: process.env.CELLGATE_BENCH_NODE_RED_LOG || "warn", metrics: false, audit: false },
    },
    // Only the node module the flow uses is loaded (an installation would have only that one).
    nodesExcludes: (process.env.CELLGATE_BENCH_NODE_RED_EXCLUDE || "").split(",").filter(Boolean),
    // Function nodes in the flow use no external modules.
    functionExternalModules: false,
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    telemetry: { enabled: false },
    diagnostics: { enabled: false },
    runtimeState: { enabled: false },
};
