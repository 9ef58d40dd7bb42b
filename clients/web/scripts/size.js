// Prints the SDK's size: as written, minified by terser (a dev dependency: npm install first), each also gzipped.

import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

import { minify } from "terser";

const source = readFileSync(new URL("../src/profilestream.js", import.meta.url), "utf8");
const { code } = await minify(source, { module: true, compress: true, mangle: true });
for (const [name, text] of [
  ["source", source],
  ["minified", code],
]) {
  const bytes = Buffer.byteLength(text);
  console.log(`${name}: ${bytes} bytes, ${gzipSync(text, { level: 9 }).length} gzipped`);
}
