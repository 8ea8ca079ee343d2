// Runs README's React snippet (testdata/snippets/react/VoiceAgent.jsx) under
// Node against a relay: esbuild compiles it with React and the component
// replaced by fake-react.mjs and the stand-in voice-agent-react.mjs. Each
// press of Talk fetches the next of TOKENS (fresh JWTs). RELAY is the
// relay's WebSocket URL. The first two presses are signed out. Prints
// {sockets, fetched, signedOut, ...} as JSON.
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as react from "./fake-react.mjs";
import { sockets, DeepgramVoiceInteraction } from "./voice-agent-react.mjs";

const require = createRequire(new URL("../../snippets/jsx-check/", import.meta.url));
const esbuild = require("esbuild");
const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const out = await esbuild.build({
  entryPoints: [here("../../snippets/react/VoiceAgent.jsx")],
  bundle: true, write: false, format: "esm", platform: "node",
  jsxFactory: "globalThis.__h", jsxFragment: "'fragment'",
  external: ["react", "@signal-meaning/voice-agent-react"],
});
const tokens = process.env.TOKENS.split(",");
const fetched = [];
globalThis.__h = react.h;
// The token routes' answers: signed out, the Express and Django routes' 401
// JSON, then an HTML page (a route that redirects to its login page); then a
// token for each press.
let signedOut = ["401", "html"];
globalThis.fetch = async () => {
  const answer = signedOut.shift();
  if (answer === "401") {
    return new Response(JSON.stringify({ error: "sign in first" }), { status: 401, headers: { "Content-Type": "application/json" } });
  }
  if (answer === "html") {
    return new Response("<!doctype html><title>Sign in</title>", { status: 200, headers: { "Content-Type": "text/html" } });
  }
  const token = tokens[fetched.length];
  fetched.push(token);
  return new Response(JSON.stringify({ token }), { status: 200, headers: { "Content-Type": "application/json" } });
};
const code = out.outputFiles[0].text
  .replace("wss://relay.example.com/ws/deepgram-proxy/", process.env.RELAY)
  .replace('from "react"', `from "${pathToFileURL(here("./fake-react.mjs"))}"`)
  .replace('from "@signal-meaning/voice-agent-react"', `from "${pathToFileURL(here("./voice-agent-react.mjs"))}"`);
const { VoiceAgent } = await import("data:text/javascript;base64," + Buffer.from(code).toString("base64"));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const until = async (pred, ms = 5000) => {
  for (let t = 0; !pred() && t < ms; t += 20) await sleep(20);
};
const last = () => sockets[sockets.length - 1];
const applied = () => last()?.events.includes("SettingsApplied");
setTimeout(() => { console.log(JSON.stringify({ sockets, fetched, timedOut: true })); process.exit(0); }, 15000);
react.mount(VoiceAgent);

// 0. signed out: Talk shows the route's error and opens no socket; then a
// page without a token.
const shown = [];
for (const expect of ["sign in first", "no token"]) {
  react.click("Talk");
  await until(() => react.text().includes(expect));
  shown.push(react.text());
}
const socketsSignedOut = sockets.length;

// 1. talk, stop, talk.
react.click("Talk");
await until(applied);
await react.click("Stop");
await until(() => last().events.some((e) => e.startsWith("close")));
react.click("Talk");
await until(() => sockets.length === 2 && applied());
// 2. the relay ends the call (Deepgram vanishes), then talk.
// The test's control, through the open socket: the fake drops its side.
DeepgramVoiceInteraction.instance.send({ type: "Fake.Vanish" });
await until(() => last().events.some((e) => e.startsWith("close")));
const before = sockets.length;
react.click("Talk");
await until(() => sockets.length > before && applied(), 8000);
// 3. stop, then talk 300 ms later.
react.click("Stop");
await sleep(300);
const before3 = sockets.length;
react.click("Talk");
await until(() => sockets.length > before3 && applied(), 8000);
await sleep(100);
console.log(JSON.stringify({ sockets, fetched, status: react.text(), signedOut: shown, socketsSignedOut }));
process.exit(0);

