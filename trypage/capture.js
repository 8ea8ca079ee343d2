// dgrelay try page: the microphone's samples to linear16 at 16 kHz.
//
// Loaded twice: as the AudioWorklet module (where it registers the
// "linear16-capture" processor, which runs on the audio thread) and as a
// page script, where app.js uses Linear16Encoder for the ScriptProcessor
// fallback of browsers without AudioWorklet.
"use strict";

// Linear16Encoder resamples mono float samples from the audio context's rate
// to outRate and emits them as 16-bit little-endian PCM (what Deepgram calls
// linear16), chunkSamples at a time, each chunk a fresh ArrayBuffer. Going
// down in rate it averages the input samples that make each output sample
// (a box filter: enough against aliasing for speech at 16 kHz); going up,
// it interpolates.
class Linear16Encoder {
  constructor(inRate, outRate, chunkSamples, emit) {
    this.step = inRate / outRate; // input samples per output sample
    this.emit = emit;
    this.chunkSamples = chunkSamples;
    this.chunk = new Int16Array(chunkSamples);
    this.filled = 0;
    this.pos = 0; // down: input samples into the current output's window
    this.sum = 0;
    this.count = 0;
    this.t = 0; // up: where the next output falls after the previous input
    this.prev = 0;
  }

  push(input) {
    if (this.step >= 1) {
      for (let i = 0; i < input.length; i++) {
        this.sum += input[i];
        this.count++;
        this.pos += 1;
        if (this.pos >= this.step) {
          this.pos -= this.step;
          this.out(this.sum / this.count);
          this.sum = 0;
          this.count = 0;
        }
      }
      return;
    }
    for (let i = 0; i < input.length; i++) {
      const x = input[i];
      while (this.t < 1) {
        this.out(this.prev + (x - this.prev) * this.t);
        this.t += this.step;
      }
      this.t -= 1;
      this.prev = x;
    }
  }

  out(v) {
    const s = Math.max(-1, Math.min(1, v));
    this.chunk[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.filled === this.chunkSamples) {
      // Int16Array is the platform's byte order; every browser runs
      // little-endian, as linear16 is.
      this.emit(this.chunk.buffer);
      this.chunk = new Int16Array(this.chunkSamples);
      this.filled = 0;
    }
  }
}

if (typeof AudioWorkletProcessor === "function" && typeof registerProcessor === "function") {
  // The processor posts each chunk to the page, which sends it on the
  // socket; the buffer is transferred, not copied.
  class Linear16Capture extends AudioWorkletProcessor {
    constructor(options) {
      super();
      const o = options.processorOptions;
      // sampleRate is the AudioWorkletGlobalScope's: the context's rate.
      this.encoder = new Linear16Encoder(sampleRate, o.outRate, o.chunkSamples,
        (buf) => this.port.postMessage(buf, [buf]));
    }

    process(inputs) {
      const channel = inputs[0] && inputs[0][0];
      if (channel) this.encoder.push(channel);
      return true;
    }
  }
  registerProcessor("linear16-capture", Linear16Capture);
} else {
  globalThis.Linear16Encoder = Linear16Encoder;
}
