// Validates job bodies with Ajv (JSON Schema draft 2020-12) and ajv-formats,
// as a producer in Node.js would: strict mode, formats asserted, and any
// strict-mode warning is an error. Used by queue/contract's TestSchemaAjv.
//
//   node validate.mjs <schema.json> <cases.json>
//
// cases.json is [{"name": "...", "body": "<job bytes as a string>"}]; prints
// [{"name": "...", "valid": true|false, "errors": "..."}] on stdout.
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const [schemaPath, casesPath] = process.argv.slice(2);
const fail = (msg) => { throw new Error("strict mode: " + msg); };
const ajv = new Ajv2020({ strict: true, allErrors: true, logger: { log() {}, warn: fail, error: fail } });
addFormats(ajv);
const validate = ajv.compile(JSON.parse(readFileSync(schemaPath, "utf8")));

const out = [];
for (const c of JSON.parse(readFileSync(casesPath, "utf8"))) {
  let job;
  try {
    job = JSON.parse(c.body);
  } catch (e) {
    out.push({ name: c.name, valid: false, errors: "JSON.parse: " + e.message });
    continue;
  }
  const valid = validate(job);
  out.push({ name: c.name, valid, errors: valid ? "" : ajv.errorsText(validate.errors) });
}
process.stdout.write(JSON.stringify(out));
