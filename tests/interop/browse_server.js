// A large OPC UA server from another stack (node-opcua) for the `cellgate browse` interoperability test.
//
//   node browse_server.js PORT RACKS CHANNELS PKI_DIR [MAX_CONTINUATION_POINTS]
//
// SecurityPolicy None, anonymous; its own certificate lives in PKI_DIR. Objects/Hall (a folder) holds RACKS rack objects (Rack01..), each with CHANNELS
// channel objects (CH001..) of 40 variables each: Voltage (an AnalogItem with EngineeringUnits volt, UNECE VLT, and
// EURange 0..5), Current, Temperature, StepNo, State, Running, Recipe and Aux01..Aux33, with node ids
// ns=<urn:cellgate:interop-browse>;s=Rack01.CH001.Voltage. 2 racks x 128 channels = 10,240 variables.
// MAX_CONTINUATION_POINTS (default 10) caps the continuation points a session may hold; a Browse that needs more
// gets BadNoContinuationPoints for those nodes. Prints "interop ready <endpoint>" when listening.
"use strict";
const { OPCUAServer, OPCUACertificateManager, DataType, standardUnits } = require("node-opcua");

const NAMED = [
  ["Current", DataType.Double, 1.5],
  ["Temperature", DataType.Float, 25.5],
  ["StepNo", DataType.UInt16, 3],
  ["State", DataType.Int32, 2],
  ["Running", DataType.Boolean, true],
  ["Recipe", DataType.String, "NMC811-formation"],
];
const AUX_TYPES = [DataType.Double, DataType.Int32, DataType.Boolean, DataType.UInt32];

async function main() {
  const port = parseInt(process.argv[2], 10);
  const racks = parseInt(process.argv[3], 10);
  const channels = parseInt(process.argv[4], 10);
  const serverCertificateManager = new OPCUACertificateManager({ rootFolder: process.argv[5] });
  const server = new OPCUAServer({
    port,
    serverCertificateManager,
    serverCapabilities: { maxBrowseContinuationPoints: parseInt(process.argv[6] || "10", 10) },
    hostname: "127.0.0.1",
    allowAnonymous: true,
    buildInfo: { productName: "cellgate-interop-browse" },
  });
  await server.initialize();
  const addressSpace = server.engine.addressSpace;
  const namespace = addressSpace.registerNamespace("urn:cellgate:interop-browse");
  const hall = namespace.addFolder(addressSpace.rootFolder.objects, { browseName: "Hall", nodeId: "s=Hall" });
  for (let r = 1; r <= racks; r += 1) {
    const rackName = `Rack${String(r).padStart(2, "0")}`;
    const rack = namespace.addObject({ organizedBy: hall, browseName: rackName, nodeId: `s=${rackName}` });
    for (let c = 1; c <= channels; c += 1) {
      const channelName = `CH${String(c).padStart(3, "0")}`;
      const prefix = `${rackName}.${channelName}`;
      const channel = namespace.addObject({ componentOf: rack, browseName: channelName, nodeId: `s=${prefix}` });
      namespace.addAnalogDataItem({
        componentOf: channel,
        browseName: "Voltage",
        nodeId: `s=${prefix}.Voltage`,
        dataType: "Double",
        engineeringUnits: standardUnits.volt,
        engineeringUnitsRange: { low: 0, high: 5 },
        value: { dataType: DataType.Double, value: 3.7 },
      });
      for (const [name, dataType, value] of NAMED) {
        namespace.addVariable({
          componentOf: channel, browseName: name, nodeId: `s=${prefix}.${name}`, dataType,
          value: { dataType, value },
        });
      }
      for (let a = 1; a <= 33; a += 1) {
        const name = `Aux${String(a).padStart(2, "0")}`;
        const dataType = AUX_TYPES[a % AUX_TYPES.length];
        namespace.addVariable({
          componentOf: channel, browseName: name, nodeId: `s=${prefix}.${name}`, dataType,
          value: { dataType, value: dataType === DataType.Boolean ? false : a },
        });
      }
    }
  }
  await server.start();
  process.stdout.write(`interop ready ${server.getEndpointUrl()}\n`);
  const stop = async () => { await server.shutdown(0); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => { process.stderr.write(`interop server failed: ${err.stack || err}\n`); process.exit(2); });
