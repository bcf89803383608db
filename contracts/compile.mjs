// Compiles src/*.sol with the pinned solcjs (offline, no solc download) and writes one artifact
// per contract to artifacts/NAME.json: { contractName, abi, bytecode, deployedBytecode }, the
// shape alloy's `sol!` reads. `node compile.mjs --check` compiles and exits 1 when the
// committed artifacts differ from what the sources compile to (the test command runs it).
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const solc = require("solc");

const here = path.dirname(new URL(import.meta.url).pathname);
const check = process.argv.includes("--check");
const srcDir = path.join(here, "src");
const outDir = path.join(here, "artifacts");

const sources = {};
for (const file of fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[`src/${file}`] = { content: fs.readFileSync(path.join(srcDir, file), "utf8") };
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    // No metadata hash in the bytecode: the artifacts depend only on the sources and settings.
    metadata: { bytecodeHash: "none" },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

function findImports(importPath) {
  const file = path.join(here, "node_modules", importPath);
  if (!fs.existsSync(file)) return { error: `not found: ${importPath}` };
  return { contents: fs.readFileSync(file, "utf8") };
}

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

let differ = 0;
if (!check) fs.mkdirSync(outDir, { recursive: true });
for (const [source, contracts] of Object.entries(output.contracts || {})) {
  if (!source.startsWith("src/")) continue;
  for (const [name, c] of Object.entries(contracts)) {
    // Interfaces declared beside a contract compile to empty bytecode: no artifact.
    if (!c.evm.bytecode.object) continue;
    const artifact = {
      contractName: name,
      sourceName: source,
      compiler: `solc ${solc.version()}`,
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
      deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
    };
    const text = `${JSON.stringify(artifact, null, 2)}\n`;
    const file = path.join(outDir, `${name}.json`);
    if (check) {
      const old = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
      if (old !== text) {
        console.error(`contracts: artifacts/${name}.json differs from what src/ compiles to; run node contracts/compile.mjs`);
        differ++;
      }
    } else {
      fs.writeFileSync(file, text);
      console.log(`contracts: ${name}: ${c.evm.deployedBytecode.object.length / 2} bytes deployed`);
    }
  }
}
process.exit(differ ? 1 : 0);
