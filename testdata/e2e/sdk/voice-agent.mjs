// A Voice Agent session through dgrelay with Deepgram's SDK (@deepgram/sdk v5),
// in a browser or under Node. relayUrl is only the relay's base URL
// ("wss://relay.example.com"): the SDK appends /v1/agent/converse, which the
// relay serves. fetchToken gets a fresh user token from your backend (the
// Express or Django route above): one per connection, as the relay checks it
// when the socket opens.
import { DeepgramClient } from "@deepgram/sdk";

export async function startVoiceAgent({ relayUrl, fetchToken, settings, onMessage, onClose }) {
  const client = new DeepgramClient({
    accessToken: await fetchToken(),
    environment: {
      agent: relayUrl,
      production: relayUrl,
      base: "https://api.deepgram.com",
      agentRest: "https://agent.deepgram.com",
    },
  });
  // reconnectAttempts: 0. By default the SDK reconnects on any close but
  // 1000, up to 30 times, with the same token: the relay refuses a spent
  // token, and a session it ended (idle, time limit, quota) should stay
  // ended. To go on after a close, call startVoiceAgent again: a new token.
  const conn = await client.agent.v1.connect({ reconnectAttempts: 0 });
  conn.on("message", onMessage); // JSON messages (an Error too) and audio (Blob)
  conn.on("close", onClose); // ev.code, ev.reason: 1000 is the end you asked for
  conn.connect(); // v5 creates the socket closed
  await conn.waitForOpen();
  conn.sendSettings(settings);
  return conn;
}
