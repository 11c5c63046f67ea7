// Validate a .glb/.gltf with the Khronos glTF validator; prints the JSON report summary on stdout.
// Usage: node tests/tools/validate_gltf.js FILE   (exit code 0 = no errors, 1 = errors, 2 = cannot run)
const fs = require('fs');
let validator;
try {
  validator = require('gltf-validator');
} catch (e) {
  console.error('gltf-validator is not installed (run `npm ci` at the repository root)');
  process.exit(2);
}
const file = process.argv[2];
const data = new Uint8Array(fs.readFileSync(file));
validator.validateBytes(data, { maxIssues: 100 }).then((report) => {
  const out = { issues: report.issues, info: report.info };
  console.log(JSON.stringify(out));
  process.exit(report.issues.numErrors > 0 ? 1 : 0);
}, (err) => { console.error(String(err)); process.exit(2); });
