// Deepgram's JavaScript SDK (@deepgram/sdk) with its default reconnects (on
// any close but 1000, up to 30 times, with the same token), kept on a relay
// that refuses it, for STORM_SECONDS; storm_test.go counts the sockets at the
// relay. RELAY_BASE is the relay's base URL, USER_TOKEN the user's JWT. It
// prints one JSON line: the opens and closes the SDK reported.
import { DeepgramClient } from "@deepgram/sdk";

const relay = process.env.RELAY_BASE;
const client = new DeepgramClient({
  accessToken: process.env.USER_TOKEN,
  environment: { agent: relay, production: relay, base: "https://api.deepgram.com", agentRest: "https://agent.deepgram.com" },
});
const conn = await client.agent.v1.connect({});
let opens = 0;
const closes = [];
conn.on("open", () => opens++);
conn.on("close", (ev) => closes.push(ev.code));
conn.on("error", () => {});
conn.on("message", () => {});
conn.connect();
setTimeout(() => {
  console.log(JSON.stringify({ opens, closes }));
  process.exit(0);
}, Number(process.env.STORM_SECONDS) * 1000);
