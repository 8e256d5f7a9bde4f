// Decodes Sparkplug B messages with Eclipse Tahu's sparkplug-payload (npm), for tests/interop/test_sparkplug.py.
//
//   node sparkplug_decode.js < messages.jsonl
//
// Each input line is {"topic": "...", "payload": "<base64>"}; a line {"encode": PAYLOAD} is encoded instead (a host's
// command). Each output line is the payload as Tahu decodes
// it, with 64-bit integers as numbers. Like a host application, it learns every alias's datatype from the
// BIRTH messages and puts it back into NDATA/DDATA metrics (which carry only the alias) before decoding.
"use strict";
const readline = require("readline");
const { decodePayload, encodePayload } = require("sparkplug-payload/lib/sparkplugbpayload");
const protoRoot = require("sparkplug-payload/lib/sparkplugPayloadProto");
const Payload = protoRoot.org.eclipse.tahu.protobuf.Payload;

const aliasTypes = new Map();

function plain(value) {
  if (value && typeof value === "object" && typeof value.toNumber === "function") return value.toNumber();
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === "object" && !(value instanceof Uint8Array)) {
    const out = {};
    for (const [key, item] of Object.entries(value)) out[key] = plain(item);
    return out;
  }
  return value;
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const request = JSON.parse(line);
  if (request.encode !== undefined) {
    // A command from a host, e.g. NCMD Node Control/Rebirth: {"encode": {"metrics": [{name, type, value}]}}.
    const encoded = Buffer.from(encodePayload(request.encode)).toString("base64");
    process.stdout.write(JSON.stringify({ payload: encoded }) + "\n");
    return;
  }
  const { topic, payload } = request;
  let bytes = Buffer.from(payload, "base64");
  const parts = topic.split("/");
  const node = `${parts[1]}/${parts[3]}`;  // group/edge node: aliases are unique per edge node
  const kind = topic.split("/")[2];
  const raw = Payload.decode(bytes);
  const rawDatatypes = raw.metrics.map((metric) =>
    Object.prototype.hasOwnProperty.call(metric, "datatype") ? metric.datatype : null);
  if (kind.endsWith("BIRTH")) {
    for (const metric of raw.metrics) aliasTypes.set(`${node}#${plain(metric.alias)}`, metric.datatype);
  } else if (kind.endsWith("DATA")) {
    for (const metric of raw.metrics) {
      if (metric.datatype === undefined || metric.datatype === 0) {
        metric.datatype = aliasTypes.get(`${node}#${plain(metric.alias)}`);
      }
    }
    bytes = Buffer.from(Payload.encode(raw).finish());
  }
  const decoded = plain(decodePayload(bytes));
  decoded.rawDatatypes = rawDatatypes;
  process.stdout.write(JSON.stringify({ topic, decoded }) + "\n");
});
