// OPC UA server from another stack (node-opcua) for the secure-channel interoperability tests.
//
//   node opcua_server.js PORT PKI_DIR [USER_PKI_DIR]
//
// Offers Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss, each with Sign and SignAndEncrypt (no
// None), user name + password (users from the INTEROP_USERS environment variable, JSON {"name": "password"},
// never on the command line) and X.509 user certificates: those in USER_PKI_DIR/trusted/certs (node-opcua checks
// the token's signature and the certificate against that folder; without USER_PKI_DIR, node-opcua's default).
// Its PKI (own certificate, trusted/rejected clients) lives in PKI_DIR; unknown client application
// certificates are accepted, as the test is about the gateway's side of the trust. Serves
// ns=<urn:cellgate:interop>;s=Counter (Double, +1 every 100 ms). Prints "interop ready <endpoint>" when listening.
"use strict";
const {
  OPCUAServer, OPCUACertificateManager, MessageSecurityMode, SecurityPolicy, DataType, Variant,
} = require("node-opcua");

async function main() {
  const port = parseInt(process.argv[2], 10);
  const pkiDir = process.argv[3];
  const users = JSON.parse(process.env.INTEROP_USERS || "{}");
  const serverCertificateManager = new OPCUACertificateManager({
    rootFolder: pkiDir,
    automaticallyAcceptUnknownCertificate: true,
  });
  const userCertificateManager = process.argv[4]
    ? new OPCUACertificateManager({ rootFolder: process.argv[4], automaticallyAcceptUnknownCertificate: false })
    : undefined;
  const server = new OPCUAServer({
    userCertificateManager,
    port,
    hostname: "127.0.0.1",
    serverCertificateManager,
    securityModes: [MessageSecurityMode.Sign, MessageSecurityMode.SignAndEncrypt],
    securityPolicies: [
      SecurityPolicy.Basic256Sha256, SecurityPolicy.Aes128_Sha256_RsaOaep, SecurityPolicy.Aes256_Sha256_RsaPss,
    ],
    allowAnonymous: false,
    userManager: { isValidUser: (name, password) => Object.prototype.hasOwnProperty.call(users, name) && users[name] === password },
    buildInfo: { productName: "cellgate-interop-node-opcua" },
  });
  await server.initialize();
  const addressSpace = server.engine.addressSpace;
  const namespace = addressSpace.registerNamespace("urn:cellgate:interop");
  let counter = 0;
  setInterval(() => { counter += 1; }, 100);
  namespace.addVariable({
    organizedBy: addressSpace.rootFolder.objects,
    browseName: "Counter",
    nodeId: "s=Counter",
    dataType: "Double",
    minimumSamplingInterval: 100,
    value: { get: () => new Variant({ dataType: DataType.Double, value: counter }) },
  });
  await server.start();
  process.stdout.write(`interop ready ${server.getEndpointUrl()}\n`);
  const stop = async () => { await server.shutdown(0); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => { process.stderr.write(`interop server failed: ${err.stack || err}\n`); process.exit(2); });
