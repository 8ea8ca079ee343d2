// A stand-in for DeepgramVoiceInteraction (@signal-meaning/voice-agent-react
// v0.11.1) as we read its source: written for this test, not copied. What it
// keeps of the component is what decides which token a socket carries:
// - proxyAuthToken is read when the socket manager is created: on the first
//   start() after mount, or after stop();
// - a call that ends otherwise (the relay closes) keeps the manager, and the
//   next start() reopens it with the token it holds;
// - stop() closes the socket (1000), waits about a second, then drops the
//   manager; a start() during that second opens nothing;
// - it opens proxyEndpoint?token=...&service=agent, sends Settings at open,
//   calls onSettingsApplied, onError({code, message}) for an Error frame, and
//   onConnectionStateChange("agent", "connected" | "closed").
import { readFileSync } from "node:fs";

const settings = readFileSync(new URL("../../clients/react-component.settings.json", import.meta.url), "utf8");
export const sockets = []; // every socket opened: {token, events}

export const DeepgramVoiceInteraction = {
  mount() {
    const inst = {
      props: {},
      manager: null,
      stopping: null,
      async start() {
        if (this.stopping) return;
        if (!this.manager) this.manager = { token: this.props.proxyAuthToken, ws: null };
        const m = this.manager;
        if (m.ws && m.ws.readyState <= 1) return;
        const rec = { token: m.token, events: [] };
        sockets.push(rec);
        const ws = new WebSocket(`${this.props.proxyEndpoint}?token=${encodeURIComponent(m.token ?? "")}&service=agent`);
        m.ws = ws;
        ws.addEventListener("open", () => {
          rec.events.push("open");
          this.props.onConnectionStateChange?.("agent", "connected");
          ws.send(settings);
        });
        ws.addEventListener("message", (e) => {
          if (typeof e.data !== "string") return;
          const msg = JSON.parse(e.data);
          rec.events.push(msg.type + (msg.code ? " " + msg.code : ""));
          if (msg.type === "SettingsApplied") this.props.onSettingsApplied?.();
          if (msg.type === "Error") this.props.onError?.({ code: msg.code, message: msg.description });
        });
        ws.addEventListener("close", (e) => {
          rec.events.push("close " + e.code);
          this.props.onConnectionStateChange?.("agent", "closed");
        });
      },
      stop() {
        if (!this.stopping) {
          const ws = this.manager?.ws;
          if (ws && ws.readyState <= 1) ws.close(1000);
          this.stopping = new Promise((r) => setTimeout(r, 1000)).then(() => {
            this.manager = null;
            this.stopping = null;
          });
        }
        return this.stopping;
      },
      startAudioCapture() {},
      send(msg) {
        this.manager?.ws?.send(JSON.stringify(msg));
      },
    };
    DeepgramVoiceInteraction.instance = inst;
    return inst;
  },
};
