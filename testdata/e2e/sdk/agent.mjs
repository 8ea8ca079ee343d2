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
//   move     Settings, then {"type":"Fake.Vanish"} sent raw through the SDK's
//            socket (the fake Deepgram drops its connection); once the relay's
//            Warning SESSION_CONTINUED comes, one InjectUserMessage turn, then
//            the SDK's close;
//   giveup   as move, but it prints "applied" once SettingsApplied came and
//            sends Fake.Vanish only when a line arrives on stdin (the test
//            makes Deepgram unreachable between the two), then waits for the
//            relay to end the session;
//   stream   Settings, then a numbered 20 ms frame every 20 ms (the fake
//            echoes each); it stops once STREAM_AFTER frames came back after
//            the first SESSION_CONTINUED, and closes;
//   expired  USER_TOKEN is expired: waits for the relay to end the session.
// events, in what it prints, is every message the SDK surfaced ("message
// TYPE", plus " CODE" for an Error or a Warning; "audio" for binary, in
// stream mode "audio N" for a run of N frames), what it sent ("sent TYPE")
// and its close ("close CODE"), in order; error is the last Error message,
// as the SDK typed it (AgentV1Error). In stream mode audio counts the echoed
// frames before and after the first move, those that were not a frame sent
// or came out of order (bad), the moves, and the last frame sent.
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
const streamBytes = 640; // 20 ms
const streamAfter = Number(process.env.STREAM_AFTER ?? 25);

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
const audio = { before: 0, after: 0, bad: 0, moves: 0, last: 0 };
let lastSeq = 0;
const waiters = [];
const check = () => waiters.splice(0).forEach((w) => (w.pred() ? w.resolve() : waiters.push(w)));
const waitFor = (pred) => new Promise((resolve) => (pred() ? resolve() : waiters.push({ pred, resolve })));
const count = (e) => events.filter((x) => x === e).length;

function finish() {
  clearTimeout(timer);
  console.log(JSON.stringify({ events, audioDown, audio, error: errorMessage, close: closeInfo }));
  process.exit(0);
}
function send(type, msg) {
  events.push("sent " + type);
  conn["send" + type]({ type, ...msg });
}

// frameOf is stream frame seq: its number, then bytes that depend on it
// (as the Go tests' audioFrame), so that a frame cut or corrupted shows.
function frameOf(seq) {
  const f = new Uint8Array(streamBytes);
  new DataView(f.buffer).setUint32(0, seq);
  for (let i = 4; i < streamBytes; i++) f[i] = (seq ^ i) & 255;
  return f;
}
// echoed checks one frame that came back in stream mode.
function echoed(bytes) {
  const seq = bytes.length === streamBytes ? new DataView(bytes.buffer).getUint32(0) : 0;
  const want = frameOf(seq);
  if (seq <= lastSeq || !bytes.every((b, i) => b === want[i])) audio.bad++;
  else if (audio.moves > 0) audio.after++;
  else audio.before++;
  lastSeq = Math.max(lastSeq, seq);
  const last = events.length - 1;
  if (events[last]?.startsWith("audio ")) events[last] = "audio " + (Number(events[last].slice(6)) + 1);
  else events.push("audio 1");
}

let handled = Promise.resolve();
async function onMessage(msg) {
  if (msg instanceof Blob || msg instanceof ArrayBuffer) {
    audioDown++;
    if (mode === "stream") echoed(new Uint8Array(msg instanceof Blob ? await msg.arrayBuffer() : msg));
    else events.push("audio");
  } else {
    const code = msg.type === "Error" || msg.type === "Warning" ? " " + msg.code : "";
    events.push("message " + msg.type + code);
    if (msg.type === "Error") errorMessage = msg;
    if (msg.type === "Warning" && msg.code === "SESSION_CONTINUED") audio.moves++;
    if (msg.type === "FunctionCallRequest") {
      for (const f of msg.functions) {
        if (f.client_side) send("FunctionCallResponse", { id: f.id, name: f.name, content: '{"time":"noon"}' });
      }
    }
  }
  check();
}
// vanish has the fake Deepgram drop its connection: a test control, sent raw
// through the SDK's socket (the SDK has no method for it).
function vanish() {
  events.push("sent Fake.Vanish");
  conn.socket.send(JSON.stringify({ type: "Fake.Vanish" }));
}

conn = await startVoiceAgent({
  relayUrl: process.env.RELAY_BASE,
  fetchToken: async () => process.env.USER_TOKEN,
  settings,
  // Handled one after the other: a Blob's bytes are read asynchronously.
  onMessage: (msg) => (handled = handled.then(() => onMessage(msg))),
  onClose: (ev) =>
    (handled = handled.then(() => {
      closeInfo = { code: ev?.code, reason: ev?.reason };
      events.push("close " + ev?.code);
      check();
    })),
}).catch((err) => (mode === "expired" ? null : fail("connect: " + err)));

if (mode === "expired") {
  await waitFor(() => closeInfo !== null);
  finish();
}
await waitFor(() => events.includes("message SettingsApplied") || closeInfo !== null);
if (mode === "giveup") {
  if (closeInfo) finish();
  console.log("applied");
  await new Promise((resolve) => process.stdin.once("data", resolve));
  vanish();
  await waitFor(() => closeInfo !== null);
  finish();
}
if (mode === "move") {
  if (closeInfo) finish();
  vanish();
  await waitFor(() => audio.moves > 0 || closeInfo !== null);
  if (closeInfo) finish();
  send("InjectUserMessage", { content: "are you still there" });
  await waitFor(() => events.includes("message AgentAudioDone") || closeInfo !== null);
  conn.close();
  await waitFor(() => closeInfo !== null);
  finish();
}
if (mode === "stream") {
  if (closeInfo) finish();
  let seq = 0;
  const ticker = setInterval(() => conn.sendMedia(frameOf((audio.last = ++seq))), 20);
  await waitFor(() => audio.after >= streamAfter || closeInfo !== null);
  clearInterval(ticker);
  conn.close();
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
