// Deepgram's JavaScript SDK (@deepgram/sdk, pinned in package.json) opening a
// Voice Agent session through dgrelay instead of Deepgram. e2e_test.go runs it
// against a relay in front of the fake upstream and reads the JSON line it
// prints last. It exits non-zero on any failure.
//
// How the SDK is pointed at the relay: its `environment.agent` is the base URL
// to which it appends /v1/agent/converse, so the relay serves that path
// (PROXY_PATH=/v1/agent/converse). Its `accessToken` is the user's JWT: under
// Node the SDK sends it as "Authorization: Bearer <jwt>", in a browser as the
// subprotocol pair ["bearer", jwt]; dgrelay takes both.
//
// MODE picks the session:
//   relay    (the default) Settings, audio both ways, then the SDK's close;
//   vanish   Settings, then {"type":"Fake.Vanish"} sent raw through the SDK's
//            socket (the fake Deepgram drops its connection), then waits for
//            the relay to end the session;
//   expired  USER_TOKEN is expired: waits for the relay to end the session.
// events, in what it prints, is every message the SDK surfaced ("message
// TYPE", plus " CODE" for an Error) and its close ("close CODE"), in order;
// error is the last Error message, as the SDK typed it (AgentV1Error).
import { DeepgramClient } from "@deepgram/sdk";

const relay = process.env.RELAY_BASE; // ws://127.0.0.1:PORT
const token = process.env.USER_TOKEN;
const mode = process.env.MODE ?? "relay";
const frames = 5;
const frameBytes = 3200; // 100 ms of linear16 16 kHz mono

function fail(msg) {
  console.error(msg);
  process.exit(1);
}
const timer = setTimeout(() => fail("timed out"), 20000);

const client = new DeepgramClient({
  accessToken: token,
  environment: { base: "http://127.0.0.1:1", production: relay, agent: relay, agentRest: "http://127.0.0.1:1" },
});
const conn = await client.agent.v1.connect({ reconnectAttempts: 0 });

const seen = [];
const audio = [];
const events = [];
let errorMessage = null;
let resolveDone;
const done = new Promise((r) => (resolveDone = r));
let resolveClosed;
const closed = new Promise((r) => (resolveClosed = r));
let closeInfo = null;

function finish() {
  clearTimeout(timer);
  console.log(JSON.stringify({ seen, audioFrames: audio.length, events, error: errorMessage, close: closeInfo }));
  process.exit(0);
}

conn.on("message", async (msg) => {
  if (msg instanceof Blob) {
    audio.push(new Uint8Array(await msg.arrayBuffer()));
    if (audio.length === frames) resolveDone();
    return;
  }
  seen.push(msg.type);
  events.push("message " + msg.type + (msg.type === "Error" ? " " + msg.code : ""));
  if (msg.type === "Error") errorMessage = msg;
  if (msg.type === "SettingsApplied" && mode === "vanish") {
    conn.socket.send(JSON.stringify({ type: "Fake.Vanish" }));
    return;
  }
  if (msg.type === "SettingsApplied") {
    for (let i = 0; i < frames; i++) {
      const frame = new Uint8Array(frameBytes);
      for (let j = 0; j < frameBytes; j++) frame[j] = (i * 31 + j) & 0xff;
      conn.sendMedia(frame);
    }
  }
});
conn.on("close", (ev) => {
  closeInfo = { code: ev?.code, reason: ev?.reason };
  events.push("close " + ev?.code);
  resolveClosed();
});
conn.on("error", (err) => fail("socket error: " + (err?.message ?? err)));

conn.connect();
if (mode === "expired") {
  await closed;
  finish();
}
await conn.waitForOpen();
conn.sendSettings({
  type: "Settings",
  audio: { input: { encoding: "linear16", sample_rate: 16000 }, output: { encoding: "linear16", sample_rate: 24000 } },
  agent: {
    language: "en",
    listen: { provider: { type: "deepgram", model: "nova-3" } },
    think: { provider: { type: "open_ai", model: "gpt-4o-mini" }, prompt: "You are a test." },
    speak: { provider: { type: "deepgram", model: "aura-2-thalia-en" } },
  },
});
if (mode === "vanish") {
  await closed;
  finish();
}

await done;
for (let i = 0; i < frames; i++) {
  const got = audio[i];
  if (got.length !== frameBytes) fail(`frame ${i}: ${got.length} bytes`);
  for (let j = 0; j < frameBytes; j++) {
    if (got[j] !== ((i * 31 + j) & 0xff)) fail(`frame ${i} differs at byte ${j}`);
  }
}
conn.close();
for (let i = 0; i < 100 && closeInfo === null; i++) await new Promise((r) => setTimeout(r, 20));
finish();
