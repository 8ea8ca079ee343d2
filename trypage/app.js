// dgrelay try page: microphone → this relay → Deepgram's Voice Agent →
// speaker, with the conversation, every Error frame and every close shown.
//
// Everything from the wire is shown with textContent, never as HTML. The
// user's token is read from its field when Start is pressed, sent as the
// "bearer" subprotocol and kept nowhere else.
"use strict";

(() => {
  const INPUT_RATE = 16000; // what Settings tells Deepgram the microphone sends
  const OUTPUT_RATE = 24000; // what Settings asks Deepgram to speak in
  const CHUNK_MS = 50; // audio up in 50 ms messages (Deepgram advises 20-100 ms)
  const KEEPALIVE_MS = 5000; // Deepgram closes after ~10 s without audio or KeepAlive
  const PLAYBACK_LEAD_S = 0.1; // the jitter margin when playback (re)starts
  const MAX_LINES = 300; // each list keeps its newest lines

  const SETTINGS = {
    type: "Settings",
    audio: {
      input: { encoding: "linear16", sample_rate: INPUT_RATE },
      output: { encoding: "linear16", sample_rate: OUTPUT_RATE, container: "none" },
    },
    agent: {
      language: "en",
      listen: { provider: { type: "deepgram", model: "nova-3" } },
      think: {
        provider: { type: "open_ai", model: "gpt-4o-mini" },
        prompt: "You are a friendly voice assistant. Keep your answers short: one or two sentences.",
      },
      speak: { provider: { type: "deepgram", model: "aura-2-thalia-en" } },
      greeting: "Hello! How can I help you today?",
    },
  };

  const body = document.body;
  const proxyPath = body.dataset.proxyPath;
  const authOn = body.dataset.auth === "true";
  const $ = (id) => document.getElementById(id);
  const startButton = $("start");
  const stopButton = $("stop");
  const stateEl = $("state");
  const sentEl = $("sent");
  const playedEl = $("played");
  const conversationEl = $("conversation");
  const eventsEl = $("events");
  const tokenInput = $("token");

  let call = null; // the running call, or null
  let sentBytes = 0;
  let playedMs = 0;
  let playedBuffers = 0;

  function setState(s) {
    stateEl.textContent = s;
    stateEl.dataset.state = s;
  }

  // line appends an <li> to list, made of [text, class] parts, and keeps
  // the list to MAX_LINES.
  function line(list, cls, parts, data) {
    const li = document.createElement("li");
    if (cls) li.className = cls;
    for (const [k, v] of Object.entries(data || {})) li.dataset[k] = v;
    for (const [text, partClass] of parts) {
      if (li.childNodes.length) li.append(" ");
      const span = document.createElement("span");
      if (partClass) span.className = partClass;
      span.textContent = text;
      li.append(span);
    }
    list.append(li);
    while (list.children.length > MAX_LINES) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  const note = (cls, text, data) => line(eventsEl, cls, [[text, ""]], data);

  function showMeters() {
    sentEl.textContent = (sentBytes / 1000).toFixed(0) + " kB";
    sentEl.dataset.bytes = String(sentBytes);
    playedEl.textContent = (playedMs / 1000).toFixed(1) + " s";
    playedEl.dataset.ms = String(Math.round(playedMs));
    playedEl.dataset.buffers = String(playedBuffers);
  }

  async function start() {
    if (call) return;
    const c = { ws: null, ctx: null, stream: null, nodes: [], keepAlive: 0, applied: false, ended: false,
      playhead: 0, sources: new Set(), oddByte: null };
    call = c;
    sentBytes = 0; // the meters count this call
    playedMs = 0;
    playedBuffers = 0;
    showMeters();
    startButton.disabled = true;
    stopButton.disabled = false;
    try {
      if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new Error("the microphone needs a secure page: open it over https:// or on localhost");
      }
      // Made in the click's own turn, so that the browser lets it play.
      c.ctx = new AudioContext();
      setState("opening microphone");
      c.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      if (c.ended) return finish(c); // Stop came during the prompt
      await c.ctx.resume();
      await startCapture(c);
      if (c.ended) return finish(c);
      connect(c);
    } catch (e) {
      if (!c.ended) note("error", "microphone: " + (e && e.message ? e.message : String(e)), { code: "MICROPHONE" });
      finish(c);
    }
  }

  // startCapture feeds the microphone through the encoder; chunks go on the
  // socket once Deepgram has applied the Settings.
  async function startCapture(c) {
    const source = c.ctx.createMediaStreamSource(c.stream);
    const send = (buf) => {
      if (c.applied && c.ws && c.ws.readyState === WebSocket.OPEN) {
        c.ws.send(buf);
        sentBytes += buf.byteLength;
        showMeters();
      }
    };
    const chunkSamples = INPUT_RATE * CHUNK_MS / 1000;
    let node;
    if (c.ctx.audioWorklet && typeof AudioWorkletNode === "function") {
      await c.ctx.audioWorklet.addModule("/try/capture.js");
      node = new AudioWorkletNode(c.ctx, "linear16-capture", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        channelCount: 1, channelCountMode: "explicit",
        processorOptions: { outRate: INPUT_RATE, chunkSamples },
      });
      node.port.onmessage = (ev) => send(ev.data);
    } else {
      const encoder = new window.Linear16Encoder(c.ctx.sampleRate, INPUT_RATE, chunkSamples, send);
      node = c.ctx.createScriptProcessor(4096, 1, 1);
      node.onaudioprocess = (ev) => encoder.push(ev.inputBuffer.getChannelData(0));
    }
    // Connected to the output (it writes silence) so that the browser runs it.
    source.connect(node);
    node.connect(c.ctx.destination);
    c.nodes.push(source, node);
  }

  function connect(c) {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const url = scheme + location.host + proxyPath + "?service=agent";
    const token = authOn && tokenInput ? tokenInput.value.trim() : "";
    setState("connecting");
    try {
      c.ws = token ? new WebSocket(url, ["bearer", token]) : new WebSocket(url);
    } catch (e) {
      // The browser's message would quote the token: say what is wrong
      // without it.
      note("error", token ? "the token holds characters a WebSocket subprotocol cannot carry" : "cannot open " + url,
        { code: "CLIENT" });
      return finish(c);
    }
    const ws = c.ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      setState("open");
      note("info", ws.protocol === "bearer" ? "connected; token sent as the bearer subprotocol" : "connected");
      ws.send(JSON.stringify(SETTINGS));
      c.keepAlive = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "KeepAlive" }));
      }, KEEPALIVE_MS);
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") onText(c, ev.data);
      else play(c, ev.data);
    };
    ws.onclose = (ev) => {
      const why = (ev.reason || "(no reason)") + (ev.wasClean ? "" : ", connection lost");
      line(eventsEl, "close", [["close " + ev.code, "code"], [why, ""]], { code: String(ev.code) });
      finish(c);
    };
  }

  function onText(c, data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      note("warning", "a text message that is not JSON (" + data.length + " characters)");
      return;
    }
    if (msg === null || typeof msg !== "object") {
      note("warning", "a text message that is not a JSON object");
      return;
    }
    const type = String(msg.type);
    switch (type) {
      case "ConversationText": {
        const role = String(msg.role);
        line(conversationEl, "", [[role, "role role-" + role.replace(/[^a-z]/g, "")], [String(msg.content), ""]]);
        break;
      }
      case "Error":
        line(eventsEl, "error", [[String(msg.code), "code"], [String(msg.description), ""]], { code: String(msg.code) });
        break;
      case "Warning":
        line(eventsEl, "warning", [[String(msg.code), "code"], [String(msg.description), ""]], { code: String(msg.code) });
        break;
      case "Welcome":
        note("info", "Welcome (request " + String(msg.request_id) + ")");
        break;
      case "SettingsApplied":
        c.applied = true;
        setState("live");
        note("info", "SettingsApplied: the microphone is on");
        break;
      case "UserStartedSpeaking":
        // The user talks over the agent: what is queued is no longer wanted.
        bargeIn(c);
        note("info", type);
        break;
      default:
        note("info", type);
    }
  }

  // play schedules one message of linear16 24 kHz audio right after the
  // previous one; when playback has run dry it restarts a little ahead of
  // now, so that the next messages' jitter does not break it again.
  function play(c, data) {
    if (!c.ctx || c.ctx.state === "closed") return;
    let bytes = new Uint8Array(data);
    if (c.oddByte !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = c.oddByte;
      joined.set(bytes, 1);
      bytes = joined;
      c.oddByte = null;
    }
    const n = bytes.length >> 1;
    if (bytes.length & 1) c.oddByte = bytes[bytes.length - 1];
    if (n === 0) return;
    const view = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
    const buffer = c.ctx.createBuffer(1, n, OUTPUT_RATE);
    const samples = buffer.getChannelData(0);
    for (let i = 0; i < n; i++) samples[i] = view.getInt16(2 * i, true) / 32768;
    const src = c.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(c.ctx.destination);
    const now = c.ctx.currentTime;
    if (c.playhead < now) c.playhead = now + PLAYBACK_LEAD_S;
    src.start(c.playhead);
    c.playhead += buffer.duration;
    c.sources.add(src);
    src.onended = () => {
      c.sources.delete(src);
      if (src.cut) return;
      playedMs += buffer.duration * 1000;
      playedBuffers++;
      showMeters();
    };
  }

  function bargeIn(c) {
    for (const src of c.sources) {
      src.cut = true;
      src.stop();
    }
    c.sources.clear();
    c.playhead = 0;
  }

  // finish releases whatever the call holds (the microphone, audio, the
  // KeepAlive timer); it may run again for what arrived after it (a
  // microphone granted after Stop). The page is reset once.
  function finish(c) {
    c.ended = true;
    clearInterval(c.keepAlive);
    for (const n of c.nodes) n.disconnect();
    c.nodes = [];
    if (c.stream) for (const track of c.stream.getTracks()) track.stop();
    if (c.ctx && c.ctx.state !== "closed") c.ctx.close();
    if (call !== c) return;
    call = null;
    setState(c.ws ? "closed" : "idle");
    startButton.disabled = false;
    stopButton.disabled = true;
  }

  function stop() {
    const c = call;
    if (!c) return;
    c.ended = true;
    if (c.ws && (c.ws.readyState === WebSocket.OPEN || c.ws.readyState === WebSocket.CONNECTING)) {
      setState("closing");
      stopButton.disabled = true;
      c.ws.close(1000, "user stopped");
      return; // the close event finishes the call
    }
    // No socket yet (the microphone prompt or the worklet is pending):
    // the page resets now, and start() releases what comes after.
    finish(c);
  }

  startButton.addEventListener("click", start);
  stopButton.addEventListener("click", stop);
  showMeters();
})();
