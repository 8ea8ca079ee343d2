// A Node WebSocket relay on the npm ws package, written the way Node
// backends for the Deepgram Voice Agent usually are: one upstream socket per
// client, messages passed on with their type, client messages queued until
// the upstream opens, closes passed on. bench/ runs it as the "node" path.
//
//   PORT=8081 UPSTREAM=ws://127.0.0.1:9000 DEEPGRAM_API_KEY=... node relay.mjs
import { WebSocketServer, WebSocket } from "ws";

const port = Number(process.env.PORT);
const upstreamBase = process.env.UPSTREAM;
const key = process.env.DEEPGRAM_API_KEY;
const sendable = (code) => code >= 1000 && code <= 4999 && ![1004, 1005, 1006, 1015].includes(code);

const wss = new WebSocketServer({ port, host: "127.0.0.1", perMessageDeflate: false, maxPayload: 1 << 20 });
wss.on("connection", (client, req) => {
  const url = new URL(req.url, "http://x");
  url.searchParams.delete("token");
  url.searchParams.delete("service");
  const upstream = new WebSocket(upstreamBase + url.pathname + url.search, {
    headers: { Authorization: "Token " + key },
    perMessageDeflate: false,
    maxPayload: 1 << 20,
  });
  const queue = [];
  client.on("message", (data, isBinary) => {
    if (upstream.readyState === WebSocket.OPEN) upstream.send(data, { binary: isBinary });
    else queue.push([data, isBinary]);
  });
  upstream.on("open", () => {
    for (const [data, isBinary] of queue) upstream.send(data, { binary: isBinary });
    queue.length = 0;
  });
  upstream.on("message", (data, isBinary) => {
    if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
  });
  client.on("close", (code, reason) => {
    if (upstream.readyState === WebSocket.OPEN) upstream.close(sendable(code) ? code : 1001, reason);
    else upstream.terminate();
  });
  upstream.on("close", (code, reason) => {
    if (client.readyState === WebSocket.OPEN) client.close(sendable(code) ? code : 1014, reason);
  });
  upstream.on("error", () => client.readyState === WebSocket.OPEN && client.close(1014, "upstream error"));
  client.on("error", () => upstream.terminate());
});
wss.on("listening", () => console.log("node relay listening on", port));
