// AudioWorklet processor: microphone (any rate, any channel count) -> mono PCM16 at a target rate.
//
// Runs on the audio rendering thread. `sampleRate` is the AudioContext's own rate (44.1 kHz,
// 48 kHz, ... whatever the device uses): never assume one. Downsampling first low-passes the signal
// (two cascaded biquads at 0.45 x the target rate, so nothing above the new Nyquist folds back),
// then interpolates linearly between input samples. Frames of `frameMs` are posted to the main
// thread as transferable Int16Array buffers, with their RMS level for the meter.

class Biquad {
  constructor(cutoff, rate) {
    const w = (2 * Math.PI * cutoff) / rate;
    const alpha = Math.sin(w) / (2 * Math.SQRT1_2); // Q = 1/sqrt(2): Butterworth
    const cos = Math.cos(w);
    const a0 = 1 + alpha;
    this.b0 = (1 - cos) / 2 / a0;
    this.b1 = (1 - cos) / a0;
    this.b2 = this.b0;
    this.a1 = (-2 * cos) / a0;
    this.a2 = (1 - alpha) / a0;
    this.x1 = this.x2 = this.y1 = this.y2 = 0;
  }

  run(block) {
    for (let i = 0; i < block.length; i++) {
      const x = block[i];
      const y = this.b0 * x + this.b1 * this.x1 + this.b2 * this.x2 - this.a1 * this.y1 - this.a2 * this.y2;
      this.x2 = this.x1;
      this.x1 = x;
      this.y2 = this.y1;
      this.y1 = y;
      block[i] = y;
    }
  }
}

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetRate = opts.targetRate || 16000;
    this.ratio = sampleRate / this.targetRate; // input samples per output sample
    this.filters = this.ratio > 1 ? [new Biquad(0.45 * this.targetRate, sampleRate), new Biquad(0.45 * this.targetRate, sampleRate)] : [];
    this.frameLength = Math.max(1, Math.round((this.targetRate * (opts.frameMs || 40)) / 1000));
    this.frame = new Int16Array(this.frameLength);
    this.filled = 0;
    this.sumSquares = 0;
    this.position = 0; // where the next output sample lies, in input samples from the start of the next block
    this.previous = 0; // last input sample of the previous block
    this.mono = new Float32Array(128);
    this.port.postMessage({ type: "started", inputRate: sampleRate, targetRate: this.targetRate });
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0 || channels[0].length === 0) return true;
    const n = channels[0].length;
    if (this.mono.length !== n) this.mono = new Float32Array(n);
    const mono = this.mono;
    mono.set(channels[0]);
    if (channels.length > 1) {
      for (let c = 1; c < channels.length; c++) for (let i = 0; i < n; i++) mono[i] += channels[c][i];
      for (let i = 0; i < n; i++) mono[i] /= channels.length;
    }
    for (const filter of this.filters) filter.run(mono);

    let t = this.position;
    while (t <= n - 1) {
      const i = Math.floor(t);
      const f = t - i;
      const a = i < 0 ? this.previous : mono[i];
      const b = mono[i + 1 < n ? i + 1 : n - 1];
      this.push(a + (b - a) * f);
      t += this.ratio;
    }
    this.position = t - n;
    this.previous = mono[n - 1];
    return true;
  }

  push(sample) {
    const s = sample > 1 ? 1 : sample < -1 ? -1 : sample;
    this.sumSquares += s * s;
    this.frame[this.filled++] = s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff);
    if (this.filled === this.frameLength) {
      const rms = Math.sqrt(this.sumSquares / this.filled);
      const buffer = this.frame.buffer;
      this.port.postMessage({ type: "frame", pcm: buffer, rms }, [buffer]);
      this.frame = new Int16Array(this.frameLength); // the old one was transferred (detached)
      this.filled = 0;
      this.sumSquares = 0;
    }
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
