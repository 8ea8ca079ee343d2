// Deepgram's JavaScript SDK (@deepgram/sdk, pinned in package.json) opening a
// Voice Agent session through dgrelay with README's snippet, voice-agent.mjs,
// as written. e2e_test.go runs it against a relay in front of the fake
// Deepgram and reads the JSON line it prints last. It exits non-zero on any
// failure.
//
// RELAY_BASE is the relay's base URL (the SDK appends /v1/agent/converse,
// which the relay serves). USER_TOKEN is the user's JWT: under Node the SDK
// sends it as "Authorization: Bearer <jwt>", in a browser as the subprotocol
// pair ["bearer", jwt]; dgrelay takes both. SETTINGS is the Settings file.
//
// MODE picks the session:
//   relay    (the default) Settings, KeepAlive, UpdatePrompt, audio up,
//            InjectUserMessage (the agent's reply and its audio down), a
//            client-side function call answered, then the SDK's close;
//   vanish   Settings, then {"type":"Fake.Vanish"} sent raw through the SDK's
//            socket (the fake Deepgram drops its connection), then waits for
//            the relay to end the session;
//   expired  USER_TOKEN is expired: waits for the relay to end the session.
// events, in what it prints, is every message the SDK surfaced ("message
// TYPE", plus " CODE" for an Error; "audio" for binary), what it sent ("sent
// TYPE") and its close ("close CODE"), in order; error is the last Error
// message, as the SDK typed it (AgentV1Error).
import { readFileSync } from "node:fs";
import { startVoiceAgent } from "./voice-agent.mjs";

const mode = process.env.MODE ?? "relay";
// The SDK's Settings, plus a client-side function for the call round trip.
const settings = JSON.parse(readFileSync(process.env.SETTINGS, "utf8"));
settings.agent.think.functions = [
  { name: "get_time", description: "The time of day where the user is.", parameters: { type: "object", properties: {} } },
];
const frames = 5;
const frameBytes = 3200; // 100 ms of linear16 16 kHz mono

function fail(msg) {
  console.error(msg);
  process.exit(1);
}
const timer = setTimeout(() => fail("timed out: " + JSON.stringify(events)), 15000);

const events = [];
let audioDown = 0;
let errorMessage = null;
let closeInfo = null;
let conn = null;
const waiters = [];
const check = () => waiters.splice(0).forEach((w) => (w.pred() ? w.resolve() : waiters.push(w)));
const waitFor = (pred) => new Promise((resolve) => (pred() ? resolve() : waiters.push({ pred, resolve })));
const count = (e) => events.filter((x) => x === e).length;

function finish() {
  clearTimeout(timer);
  console.log(JSON.stringify({ events, audioDown, error: errorMessage, close: closeInfo }));
  process.exit(0);
}
function send(type, msg) {
  events.push("sent " + type);
  conn["send" + type]({ type, ...msg });
}

conn = await startVoiceAgent({
  relayUrl: process.env.RELAY_BASE,
  fetchToken: async () => process.env.USER_TOKEN,
  settings,
  onMessage: (msg) => {
    if (msg instanceof Blob || msg instanceof ArrayBuffer) {
      audioDown++;
      events.push("audio");
    } else {
      events.push("message " + msg.type + (msg.type === "Error" ? " " + msg.code : ""));
      if (msg.type === "Error") errorMessage = msg;
      if (msg.type === "FunctionCallRequest") {
        for (const f of msg.functions) {
          if (f.client_side) send("FunctionCallResponse", { id: f.id, name: f.name, content: '{"time":"noon"}' });
        }
      }
    }
    check();
  },
  onClose: (ev) => {
    closeInfo = { code: ev?.code, reason: ev?.reason };
    events.push("close " + ev?.code);
    check();
  },
}).catch((err) => (mode === "expired" ? null : fail("connect: " + err)));

if (mode === "expired") {
  await waitFor(() => closeInfo !== null);
  finish();
}
await waitFor(() => events.includes("message SettingsApplied") || closeInfo !== null);
if (mode === "vanish") {
  conn.socket.send(JSON.stringify({ type: "Fake.Vanish" }));
  await waitFor(() => closeInfo !== null);
  finish();
}
send("KeepAlive", {});
send("UpdatePrompt", { prompt: "Also be brief." });
// A Settings policy that pins the prompt refuses it: the relay closes.
await waitFor(() => events.includes("message PromptUpdated") || closeInfo !== null);
if (closeInfo) finish();
for (let i = 0; i < frames; i++) {
  const frame = new Uint8Array(frameBytes);
  for (let j = 0; j < frameBytes; j += 2) frame[j + 1] = (i * 31 + j) & 0x3f; // a quiet, changing signal
  conn.sendMedia(frame);
}
for (const content of ["hello there", "call get_time"]) {
  const before = count("message AgentAudioDone");
  send("InjectUserMessage", { content });
  await waitFor(() => count("message AgentAudioDone") > before || closeInfo !== null);
}
conn.close();
await waitFor(() => closeInfo !== null);
finish();
