import { useEffect, useMemo, useRef, useState } from "react";
import { DeepgramVoiceInteraction } from "@signal-meaning/voice-agent-react";

// wss:// + your relay's host + its PROXY_PATH.
const RELAY_URL = "wss://relay.example.com/ws/deepgram-proxy/";

// A new token from your backend (the Express or Django route below) for each
// call: the relay checks it once, when the socket opens, and it lives 60 s.
async function fetchVoiceToken() {
  const res = await fetch("/api/voice-token", { credentials: "same-origin" });
  // Both routes answer JSON: {"token"}, or {"error"} with 401 when signed out.
  // Anything else (a login page, a proxy's error page) has no token.
  const body = await res.json().catch(() => ({}));
  if (!res.ok || typeof body.token !== "string") {
    throw new Error(`voice token: ${body.error ?? `HTTP ${res.status}, no token`}`);
  }
  return body.token;
}

export function VoiceAgent() {
  const voice = useRef(null);
  // A new object per start, so the effect below runs even if a token repeats.
  const [session, setSession] = useState(null);
  const [error, setError] = useState(null);
  const [status, setStatus] = useState("idle");

  // Memoized: a new object on every render makes the component reconnect.
  const agentOptions = useMemo(
    () => ({
      language: "en",
      listenModel: "nova-3",
      thinkProviderType: "open_ai",
      thinkModel: "gpt-4o-mini",
      voice: "aura-2-thalia-en",
      instructions: "You are a friendly voice assistant. Keep answers short.",
      greeting: "Hello! How can I help?",
    }),
    [],
  );

  // start() runs after the component has rendered with the new token, so the
  // socket it opens (?token=...&service=agent) carries that token.
  useEffect(() => {
    if (!session) return;
    voice.current.start().catch((err) => setError(err.message));
  }, [session]);

  async function talk() {
    setError(null);
    try {
      // The component reads proxyAuthToken only when it creates its socket
      // manager: on the first start() after mount or after stop(). A call the
      // relay ended (idle, time limit, quota) keeps the old manager and token,
      // so stop() first (it takes about a second), then fetch the new token.
      await voice.current.stop();
      setSession({ token: await fetchVoiceToken() });
    } catch (err) {
      setError(err.message);
    }
  }

  return (
    <div>
      <button onClick={talk}>Talk</button>
      <button onClick={() => voice.current.stop()}>Stop</button>
      <p>{status}</p>
      {error && <p role="alert">{error}</p>}
      <DeepgramVoiceInteraction
        ref={voice}
        proxyEndpoint={RELAY_URL}
        proxyAuthToken={session?.token}
        agentOptions={agentOptions}
        // The microphone only once Deepgram has the session: started earlier,
        // after a refusal it would open a second socket with the spent token.
        onSettingsApplied={() => voice.current.startAudioCapture()}
        // The relay's refusals and endings arrive here with their code
        // (TOKEN_EXPIRED, TOO_MANY_SESSIONS, ...), before the close.
        onError={(err) => setError(`${err.code ?? "error"}: ${err.message}`)}
        // "closed" when a call ends, whoever ended it: press Talk to go on.
        onConnectionStateChange={(service, state) => setStatus(`${service}: ${state}`)}
      />
    </div>
  );
}
