// The microphone (getUserMedia -> AudioWorklet -> PCM16 frames) and the STT WebSocket.
import { socketProtocols } from "./auth.js";

/** True where the browser lets this page use the microphone (a secure context: https or localhost). */
export function microphoneAvailable() {
  return Boolean(window.isSecureContext && navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

export class MicError extends Error {
  constructor(title, detail) {
    super(`${title}: ${detail}`);
    this.title = title;
    this.detail = detail;
  }
}

function micError(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
    return new MicError(
      "Microphone access was blocked",
      "Allow the microphone for this page (the site settings icon next to the address bar), then press the microphone button again. You can still type below.",
    );
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return new MicError("No microphone found", "Connect a microphone (or check that the system sees it), then try again.");
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return new MicError("The microphone cannot be opened", "Another application may be using it. Close it and try again.");
  }
  return new MicError("The microphone could not be started", String((err && err.message) || err));
}

/** Captures the microphone as mono PCM16 at `targetRate`; calls onFrame(ArrayBuffer, rms). */
export class MicCapture {
  constructor({ targetRate, frameMs = 40, onFrame, echoCancellation = false }) {
    this.targetRate = targetRate;
    this.echoCancellation = echoCancellation;
    this.frameMs = frameMs;
    this.onFrame = onFrame;
    this.stream = null;
    this.context = null;
    this.node = null;
    this.inputRate = null;
  }

  async start() {
    if (!microphoneAvailable()) {
      throw new MicError("The microphone needs a secure page", "Open the dashboard on localhost or over https (see the note above).");
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        // Raw audio otherwise (Whisper and the VAD do best on it). With barge-in the microphone stays live while
        // the assistant speaks, and echo cancellation keeps the assistant's own voice out of it; without it
        // the page stops feeding the microphone while the assistant speaks.
        audio: { channelCount: 1, echoCancellation: this.echoCancellation, noiseSuppression: false, autoGainControl: false },
      });
    } catch (err) {
      throw micError(err);
    }
    try {
      this.context = new AudioContext({ latencyHint: "interactive" });
      await this.context.audioWorklet.addModule(new URL("./pcm-worklet.js", import.meta.url));
      const source = this.context.createMediaStreamSource(this.stream);
      this.node = new AudioWorkletNode(this.context, "pcm16-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { targetRate: this.targetRate, frameMs: this.frameMs },
      });
      this.node.port.onmessage = ({ data }) => {
        if (data.type === "frame") this.onFrame(data.pcm, data.rms);
        else if (data.type === "started") this.inputRate = data.inputRate;
      };
      source.connect(this.node);
      // The node writes no output (silence); connecting it keeps the graph pulling it in every browser.
      this.node.connect(this.context.destination);
      if (this.context.state === "suspended") await this.context.resume();
    } catch (err) {
      this.stop();
      throw new MicError("The audio processor could not be started", String((err && err.message) || err));
    }
  }

  /** Turn echo cancellation on or off on the running microphone (where the browser allows it). */
  setEchoCancellation(on) {
    this.echoCancellation = on;
    const track = this.stream && this.stream.getAudioTracks()[0];
    if (track) track.applyConstraints({ echoCancellation: on }).catch(() => {});
  }

  stop() {
    if (this.node) {
      this.node.port.onmessage = null;
      this.node.disconnect();
    }
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (this.context) this.context.close().catch(() => {});
    this.stream = this.context = this.node = null;
  }
}

const CLOSE_MEANINGS = {
  1001: "the service is shutting down",
  1006: "the connection was lost",
  1008: "the service refused the connection",
  1011: "the service hit an error",
  1013: "the service is busy, try again later",
};

export class SttError extends Error {
  constructor(title, detail, code) {
    super(`${title}: ${detail}`);
    this.title = title;
    this.detail = detail;
    this.code = code;
  }
}

/**
 * One /ws/stt session. connect() resolves with the "ready" message; afterwards `handlers` get
 * onTranscript, onPartial (services that send partial transcripts), onSpeechStarted, onSpeechEnded
 * (voice activity: speech_started is what barge-in reacts to), onNoSpeech, onBufferLimit,
 * onServerError(message) and onClosed(SttError|null). Message types it does not know are ignored.
 */
export class SttSocket {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.ready = null;
    this.closingByUs = false;
    this.lastServerError = null;
  }

  connect(timeoutMs = 8000) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(error);
      };
      const timer = setTimeout(() => {
        fail(new SttError("The speech-to-text service did not answer", `No reply from ${this.url} within ${timeoutMs / 1000} s.`, "timeout"));
        this.close();
      }, timeoutMs);
      let ws;
      try {
        ws = new WebSocket(this.url, socketProtocols());
      } catch (err) {
        fail(new SttError("The speech-to-text address is not valid", `${this.url}: ${err.message}`, "bad_url"));
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") return;
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          return;
        }
        if (message.type === "ready") {
          this.ready = message;
          settled = true;
          clearTimeout(timer);
          resolve(message);
          return;
        }
        this.dispatch(message);
      };
      ws.onclose = (event) => {
        const error = this.closeError(event);
        if (!settled) {
          fail(error || new SttError("The speech-to-text service closed the connection", "It closed before it was ready.", "closed"));
          return;
        }
        if (this.handlers.onClosed) this.handlers.onClosed(error);
      };
    });
  }

  closeError(event) {
    if (this.closingByUs) return null;
    if (event.code === 1006 && !this.ready) {
      return new SttError(
        "The speech-to-text service is not reachable",
        `Nothing answered at ${this.url}. Start it (make run starts both services) or check stt.host and stt.port.`,
        "unreachable",
      );
    }
    const meaning = CLOSE_MEANINGS[event.code] || "the connection closed";
    // A close reason is cut at 123 bytes; the error message sent just before holds the whole text.
    const full = this.lastServerError && this.lastServerError.message;
    const reason = full && event.reason && full.startsWith(event.reason) ? full : event.reason || full || "";
    const code = (this.lastServerError && this.lastServerError.code) || `close_${event.code}`;
    return new SttError(
      "The speech-to-text service closed the connection",
      `${reason ? `Reason: ${reason}` : "No reason was given"} (code ${event.code}: ${meaning}).`,
      code,
    );
  }

  dispatch(message) {
    const h = this.handlers;
    switch (message.type) {
      case "transcript":
        if (h.onTranscript) h.onTranscript(message);
        break;
      case "partial":
        if (h.onPartial) h.onPartial(message);
        break;
      case "speech_started":
        if (h.onSpeechStarted) h.onSpeechStarted(message);
        break;
      case "speech_ended":
        if (h.onSpeechEnded) h.onSpeechEnded(message);
        break;
      case "no_speech":
        if (h.onNoSpeech) h.onNoSpeech(message);
        break;
      case "buffer_limit_reached":
        if (h.onBufferLimit) h.onBufferLimit(message);
        break;
      case "error":
        this.lastServerError = message;
        if (h.onServerError) h.onServerError(message);
        break;
      default:
        break;
    }
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN && this.ready !== null;
  }

  sendAudio(buffer) {
    if (this.open) this.ws.send(buffer);
  }

  sendJson(message) {
    if (this.open) this.ws.send(JSON.stringify(message));
  }

  close() {
    this.closingByUs = true;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "client done");
  }
}
