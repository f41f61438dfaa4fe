// The reply stream: one WebSocket to the TTS service's /ws/tts (same origin as this page), reopened
// when it closes. Protocol (tts/ws.py): every message is a JSON object {"type", ...fields}; each
// audio_chunk message is followed by exactly one binary frame of PCM16 (mono, little-endian) at the
// chunk's sample_rate.
import { ApiError } from "./api.js";
import { socketProtocols } from "./auth.js";

const RECONNECT_MS = [500, 1000, 2000, 5000, 10000];
const OPEN_TIMEOUT_MS = 6000;
const CANCEL_TIMEOUT_MS = 5000;

function socketUrl() {
  const url = new URL("ws/tts", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

/**
 * One generation asked for with text_input. `done` resolves with generation_complete's data, or with
 * {cancelled: true} once cancel() was called; it rejects with an ApiError (the service's error code and
 * message, e.g. llm_unavailable) when the service refused or failed it.
 */
class Generation {
  constructor(handlers) {
    this.handlers = handlers;
    this.id = null;
    this.socket = null; // the WebSocket its text_input went over: generation ids count per socket
    this.cancelled = false;
    this.complete = false;
    this.chunks = 0;
    this.dropped = 0;
    this.done = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }
}

export class TtsSocket {
  constructor({ onConnection, onProblem } = {}) {
    this.url = socketUrl();
    this.onConnection = onConnection;
    this.onProblem = onProblem;
    this.ws = null;
    this.opening = null;
    this.connection = null;
    this.current = null; // the generation asked for last, until it completes, fails or is cancelled
    this.pendingAudio = null; // audio_chunk metadata waiting for its binary frame
    this.cancelling = null; // a promise that settles when the service acknowledged our cancel
    this.cancelWaiter = null;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.droppedAfterCancel = 0; // audio chunks of cancelled generations that arrived and were discarded
    this.last = Promise.resolve(); // the previous generation's end: one runs at a time per socket
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN && this.connection !== null;
  }

  /** Resolves once the socket is open and the service said hello (its `connection` message). */
  connect() {
    if (this.open) return Promise.resolve(this.connection);
    if (this.opening) return this.opening;
    clearTimeout(this.reconnectTimer);
    this.opening = new Promise((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => fail("no answer in time"), OPEN_TIMEOUT_MS);
      const fail = (why) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.opening = null;
        try {
          ws.close();
        } catch {
          // already closed
        }
        reject(new ApiError(0, "tts_unreachable", `The reply stream (${this.url}) could not be opened: ${why}.`));
      };
      const ws = new WebSocket(this.url, socketProtocols());
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") {
          this.onAudioFrame(event.data);
          return;
        }
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          return;
        }
        if (message.type === "connection" && !settled) {
          settled = true;
          clearTimeout(timer);
          this.connection = message;
          this.opening = null;
          this.attempt = 0;
          if (this.onConnection) this.onConnection(this.connection);
          resolve(this.connection);
          return;
        }
        this.dispatch(message.type, message);
      };
      ws.onclose = (event) => {
        if (this.ws !== ws) return;
        this.ws = null;
        this.connection = null;
        this.pendingAudio = null;
        if (!settled) {
          fail(event.reason || `closed with code ${event.code}`);
        }
        this.lost(event);
      };
    });
    return this.opening;
  }

  /** The socket closed: whatever ran on it is over; open a new one after a short wait. */
  lost(event) {
    const generation = this.current;
    this.current = null;
    this.settleCancel();
    if (generation && !generation.cancelled && !generation.complete) {
      const reason = event.reason ? ` (${event.reason})` : "";
      generation.reject(new ApiError(0, "tts_unreachable", `The reply stream closed before the answer was complete${reason}.`));
    }
    const delay = RECONNECT_MS[Math.min(this.attempt, RECONNECT_MS.length - 1)];
    this.attempt += 1;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect().catch(() => {}), delay);
  }

  send(type, fields = {}) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify({ type, ...fields }));
    return true;
  }

  /**
   * Start a generation: text_input {text, voice, reply, speed, conversation_id}. handlers:
   * onStarted(message), onText(text, isFinal), onAudio(meta, ArrayBuffer). Returns the Generation
   * (await its `done`).
   */
  generate({ text, voice, reply, speed, conversationId }, handlers = {}) {
    const generation = new Generation(handlers);
    const previous = this.last;
    this.last = generation.done.then(
      () => {},
      () => {},
    );
    (async () => {
      await previous;
      if (this.cancelling) await this.cancelling; // the service takes one generation at a time per socket
      await this.connect();
      if (generation.cancelled) return generation.resolve({ cancelled: true });
      const data = { text, reply: Boolean(reply) };
      if (voice) data.voice = voice;
      if (speed && speed !== 1) data.speed = speed;
      if (conversationId) data.conversation_id = conversationId;
      this.current = generation;
      generation.socket = this.ws;
      if (!this.send("text_input", data)) throw new ApiError(0, "tts_unreachable", "The reply stream closed.");
    })().catch((err) => {
      if (this.current === generation) this.current = null;
      generation.reject(err instanceof ApiError ? err : new ApiError(0, "tts_unreachable", String((err && err.message) || err)));
    });
    return generation;
  }

  /**
   * Stop `generation` at once on this side (later audio of it is discarded) and tell the service how
   * much of it was heard: cancel_generation {generation_id, played_ms} stops it while it runs, and once
   * it has completed (its audio was still playing) the service trims the reply it recorded to what was
   * played. The answer (generation_cancelled, generation_truncated, or nothing_to_cancel when the cancel
   * crossed the end) is awaited before the next text_input, so the next turn sees the trimmed history.
   */
  cancel(generation, playedMs) {
    if (!generation || generation.cancelled) return;
    generation.cancelled = true;
    generation.resolve({ cancelled: true });
    const running = this.current === generation;
    const trimmable = generation.complete && generation.socket === this.ws;
    if (!running && !trimmable) return; // never sent, failed, or its socket has closed since
    const fields = { played_ms: playedMs };
    // Not known before generation_started: the cancel then stops whatever runs, which is this one.
    if (generation.id !== null) fields.generation_id = generation.id;
    if (!this.send("cancel_generation", fields)) {
      if (running) this.current = null;
      return;
    }
    this.cancelling = new Promise((resolve) => {
      this.cancelWaiter = resolve;
      setTimeout(() => this.settleCancel(), CANCEL_TIMEOUT_MS);
    });
  }

  settleCancel() {
    if (this.cancelWaiter) this.cancelWaiter();
    this.cancelWaiter = null;
    this.cancelling = null;
  }

  ours(data) {
    const generation = this.current;
    if (!generation) return null;
    if (data.generation_id !== undefined && generation.id !== null && data.generation_id !== generation.id) return null;
    return generation;
  }

  dispatch(type, data) {
    const generation = this.ours(data);
    switch (type) {
      case "generation_started":
        if (this.current && this.current.id === null) {
          this.current.id = data.generation_id;
          if (!this.current.cancelled && this.current.handlers.onStarted) this.current.handlers.onStarted(data);
        }
        break;
      case "reply_text":
        if (generation && !generation.cancelled && generation.handlers.onText) generation.handlers.onText(data.text || "", Boolean(data.is_final));
        break;
      case "audio_chunk":
        this.pendingAudio = data; // its PCM comes in the next (binary) frame
        break;
      case "generation_complete":
        if (generation) {
          generation.complete = true;
          this.current = null;
          if (!generation.cancelled) generation.resolve(data);
        }
        break;
      case "generation_cancelled":
        if (generation) this.current = null;
        this.settleCancel();
        break;
      case "generation_truncated":
        this.settleCancel();
        break;
      case "error":
        this.onError(data);
        break;
      default:
        break; // pong, status, conversation_started: nothing to do here
    }
  }

  onAudioFrame(buffer) {
    const meta = this.pendingAudio;
    this.pendingAudio = null;
    if (!meta) return;
    const generation = this.ours(meta);
    if (!generation || generation.cancelled) {
      this.droppedAfterCancel += 1; // audio of a cancelled generation: never played
      return;
    }
    generation.chunks += 1;
    if (generation.handlers.onAudio) generation.handlers.onAudio(meta, buffer);
  }

  onError(data) {
    const code = data.code || "error";
    if (code === "nothing_to_cancel") {
      // Our cancel crossed the generation's end, or the service had nothing left to trim: not a problem.
      if (this.current && this.current.cancelled) this.current = null;
      this.settleCancel();
      return;
    }
    const generation = this.current;
    // An error names its generation, or (no generation_id) refuses the text_input just sent.
    const forCurrent = generation && (data.generation_id === undefined ? generation.id === null : data.generation_id === generation.id);
    if (forCurrent) {
      this.current = null;
      if (!generation.cancelled) generation.reject(new ApiError(0, code, data.message || code));
      return;
    }
    if (this.onProblem) this.onProblem(code, data.message || code);
  }
}
