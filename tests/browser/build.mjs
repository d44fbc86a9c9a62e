// Bundles host.js (AppBridge + the MCP TypeScript client) for the browser: dist/host.js. Run by the test.
import { build } from "esbuild";

await build({
  entryPoints: [new URL("./host.js", import.meta.url).pathname],
  outfile: new URL("./dist/host.js", import.meta.url).pathname,
  bundle: true, format: "iife", platform: "browser", target: "es2022", minify: true, logLevel: "warning",
});
