// The test host: the official MCP Apps host bridge (AppBridge from @modelcontextprotocol/ext-apps) wired to
// the real server through the official TypeScript client over streamable HTTP, rendering the server's ui://
// resource in a sandboxed iframe under a strict CSP, as chat hosts do. Bundled by build.mjs into dist/host.js.
import { AppBridge, PostMessageTransport, getToolUiResourceUri } from "@modelcontextprotocol/ext-apps/app-bridge";
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

const UI = "io.modelcontextprotocol/ui";
const MIME = "text/html;profile=mcp-app";
// What a strict host allows a View: its own inline script and styles, nothing from the network.
const CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; " +
  "font-src data:; connect-src 'none'; frame-src 'none'; base-uri 'none'; form-action 'none'";
const hostInfo = { name: "bt-test-host", version: "1.0.0" };

function withCsp(html) {
  const meta = `<meta http-equiv="Content-Security-Policy" content="${CSP}">`;
  return /<head[^>]*>/i.test(html) ? html.replace(/<head[^>]*>/i, (m) => m + meta) : meta + html;
}

async function openDashboard(args) {
  const client = new Client(hostInfo, { capabilities: { extensions: { [UI]: { mimeTypes: [MIME] } } } });
  await client.connect(new StreamableHTTPClientTransport(new URL("/mcp", location.href)));
  const { tools } = await client.listTools();
  const tool = tools.find((t) => t.name === "dashboard");
  if (!tool) throw new Error("the server has no dashboard tool");
  const uri = getToolUiResourceUri(tool);
  const resource = await client.readResource({ uri });
  const content = resource.contents[0];
  if (content.mimeType !== MIME) throw new Error(`${uri} is served as ${content.mimeType}, not ${MIME}`);

  const iframe = document.createElement("iframe");
  iframe.id = "app";
  iframe.setAttribute("sandbox", "allow-scripts");  // an opaque origin: no cookies, no parent DOM
  iframe.style.cssText = "width:100%;border:0;height:900px;display:block";
  document.getElementById("frame").appendChild(iframe);

  const bridge = new AppBridge(client, hostInfo, { serverTools: {}, logging: {} },
    { hostContext: { theme: "light", displayMode: "inline", platform: "web" } });
  bridge.onsizechange = ({ height }) => { if (height) iframe.style.height = `${height}px`; };
  const initialized = new Promise((resolve) => { bridge.oninitialized = resolve; });
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  iframe.srcdoc = withCsp(content.text);
  await initialized;

  // What a host does when the model calls the tool: send its input, call it, send its result.
  bridge.sendToolInput({ arguments: args });
  const result = await client.callTool({ name: "dashboard", arguments: args });
  bridge.sendToolResult(result);
  window.bt = { client, bridge };
  return {
    uri,
    tools: tools.map((t) => ({ name: t.name, visibility: t._meta?.ui?.visibility ?? null })),
    text: result.content.map((c) => c.text || "").join(""),
    appInfo: bridge.getAppVersion() ?? null,
  };
}

window.openDashboard = openDashboard;
