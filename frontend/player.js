// Streamed replies played with Web Audio: every PCM16 chunk becomes an AudioBuffer at the chunk's own
// sample rate, scheduled to start exactly where the previous one ends (no gap, no overlap). When a
// chunk arrives after the queue ran dry, it starts a few milliseconds from now instead.
//
// How much of a reply was heard is measured on the same AudioContext clock that schedules it (see heard()).
//
// Every step is also sent as a "playback" CustomEvent on `document` (detail: {type, playback, ...}) and
// kept in `log`, so the page (and its tests) can see what was scheduled, what played and when it stopped.

const START_LEAD_S = 0.05; // first chunk (or after an underrun): time to hand the buffer to the audio thread
const MAX_LOG = 500;

function pcm16ToFloat(buffer) {
  const pcm = new Int16Array(buffer);
  const out = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) out[i] = pcm[i] / 32768;
  return out;
}

/** One reply's audio: enqueue chunks, finish() when no more will come, stop() to cut it off. */
export class Playback {
  constructor(player, tag) {
    this.player = player;
    this.tag = tag;
    this.sources = new Set();
    this.schedule = []; // {start, duration, text} of each chunk, in the order they play
    this.cut = null; // heard() at the moment stop() cut the reply off
    this.nextTime = 0; // AudioContext time where the next chunk starts
    this.chunks = 0;
    this.seconds = 0;
    this.started = false;
    this.startedAt = null; // performance.now() when the first sample is heard
    this.finished = false; // no more chunks will come
    this.state = "waiting"; // waiting | playing | ended | stopped
    this.ended = new Promise((resolve) => {
      this.settle = resolve;
    });
  }

  get active() {
    return this.state === "waiting" || this.state === "playing";
  }

  enqueue(pcm, sampleRate, meta = {}) {
    if (!this.active) return false;
    const ctx = this.player.context();
    const samples = pcm16ToFloat(pcm);
    if (!samples.length) return true;
    const buffer = ctx.createBuffer(1, samples.length, sampleRate);
    buffer.copyToChannel(samples, 0);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    const now = ctx.currentTime;
    const underrun = this.nextTime < now + 0.005;
    const start = underrun ? now + START_LEAD_S : this.nextTime;
    this.nextTime = start + buffer.duration;
    source.onended = () => {
      this.sources.delete(source);
      if (this.sources.size > 0 || !this.finished || !this.active) return;
      if (this.state === "waiting") this.markPlaying(start); // its timer has not fired yet
      this.end("ended");
    };
    source.start(start);
    this.sources.add(source);
    this.schedule.push({ start, duration: buffer.duration, text: meta.text_chunk || "" });
    this.chunks += 1;
    this.seconds += buffer.duration;
    this.player.note("chunk", this, {
      chunk: meta.chunk_id ?? this.chunks - 1,
      samples: samples.length,
      sampleRate,
      start,
      end: this.nextTime,
      underrun: underrun && this.chunks > 1,
    });
    if (!this.started) {
      this.started = true;
      const delayMs = Math.max(0, (start - now) * 1000);
      this.startedAt = performance.now() + delayMs;
      this.firstTimer = setTimeout(() => this.markPlaying(start), delayMs);
    }
    return true;
  }

  markPlaying(start) {
    if (this.state !== "waiting") return;
    this.state = "playing";
    this.player.note("playing", this, { start });
    if (this.onPlaying) this.onPlaying(this);
  }

  /** No more chunks will come: the playback ends when the last one has played. */
  finish() {
    this.finished = true;
    if (this.chunks === 0) this.end("ended");
    else if (this.sources.size === 0 && this.state === "playing") this.end("ended");
  }

  /**
   * What has been heard so far: the seconds of audio played (a gap after an underrun does not count)
   * and the text of each chunk that began to play. The service keeps the same of a cut reply when it
   * is told the seconds (played_ms), so the bubble and the conversation it remembers agree.
   */
  heard() {
    const ctx = this.player.ctx;
    // currentTime is what the audio thread renders now; it reaches the speakers outputLatency later.
    const now = ctx ? ctx.currentTime - (ctx.outputLatency || 0) : 0;
    let seconds = 0;
    const texts = [];
    for (const chunk of this.schedule) {
      const played = Math.min(chunk.duration, now - chunk.start);
      if (played <= 0) break;
      seconds += played;
      texts.push(chunk.text);
    }
    return { seconds, texts };
  }

  /** Cut the reply off now: everything scheduled is stopped, later chunks are refused. Returns what
   * was heard up to the cut (or, once the reply has ended, all of it). */
  stop() {
    if (!this.active) return this.cut || this.heard();
    const ctx = this.player.ctx;
    const now = ctx ? ctx.currentTime : 0;
    this.cut = this.heard();
    const queued = Math.max(0, this.nextTime - now); // seconds of audio that will not be heard
    for (const source of this.sources) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        // never started
      }
      source.disconnect();
    }
    this.sources.clear();
    this.end("stopped", { at: now, queued, played: this.cut.seconds });
    return this.cut;
  }

  end(state, extra = {}) {
    if (!this.active) return;
    clearTimeout(this.firstTimer);
    this.state = state;
    this.player.note(state, this, { chunks: this.chunks, seconds: this.seconds, ...extra });
    if (this.player.current === this) this.player.current = null;
    this.settle(state);
  }
}

export class StreamPlayer {
  constructor() {
    this.ctx = null;
    this.current = null;
    this.log = [];
  }

  /** The playback AudioContext; call it from a click or key press first, so the browser lets it play. */
  context() {
    if (!this.ctx) this.ctx = new AudioContext({ latencyHint: "interactive" });
    if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
    return this.ctx;
  }

  get blocked() {
    return this.ctx !== null && this.ctx.state === "suspended";
  }

  /** A new reply's playback; one at a time (a previous one still playing is stopped). */
  begin(tag) {
    if (this.current) this.current.stop();
    this.context();
    const playback = new Playback(this, tag);
    this.current = playback;
    this.note("begin", playback);
    return playback;
  }

  note(type, playback, extra = {}) {
    const entry = { type, tag: playback.tag, time: performance.now(), ctxTime: this.ctx ? this.ctx.currentTime : 0, ...extra };
    this.log.push(entry);
    if (this.log.length > MAX_LOG) this.log.shift();
    document.dispatchEvent(new CustomEvent("playback", { detail: entry }));
  }
}
