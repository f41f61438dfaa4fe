// Talking to the TTS service (same origin as this page) and turning failures into plain words.
import { withKey } from "./auth.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorFrom(response) {
  let code = `http_${response.status}`;
  let message = `The service answered ${response.status} ${response.statusText}.`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message);
}

export async function getJson(path, { timeoutMs = 4000 } = {}) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store", headers: withKey(), signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    throw new ApiError(0, "unreachable", err && err.name === "TimeoutError" ? "no answer in time" : "not reachable");
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/**
 * A request that changes something: `json` (a JSON body) or `form` (a FormData, sent as multipart). Resolves
 * to the answer's JSON (null for 204); rejects with ApiError.
 */
export async function send(path, { method = "POST", json, form } = {}) {
  const headers = withKey(json === undefined ? {} : { "Content-Type": "application/json" });
  let response;
  try {
    response = await fetch(path, { method, headers, body: json === undefined ? form : JSON.stringify(json) });
  } catch {
    throw new ApiError(0, "tts_unreachable", "The text-to-speech service is not reachable. Is it running?");
  }
  if (!response.ok) throw await errorFrom(response);
  return response.status === 204 ? null : response.json();
}

/** Server-Sent Events of a GET, read with fetch (an EventSource cannot send the API key): calls onEvent(name, data). */
export async function readEvents(path, onEvent) {
  const response = await fetch(path, { cache: "no-store", headers: withKey() });
  if (!response.ok) throw await errorFrom(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (name && data) onEvent(name, JSON.parse(data));
    }
  }
}

/** POST a JSON body; resolves to the JSON answer. */
export async function postJson(path, body) {
  return send(path, { json: body });
}

export async function deleteJson(path) {
  return send(path, { method: "DELETE" });
}

export async function getBlob(path) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store", headers: withKey() });
  } catch {
    throw new ApiError(0, "tts_unreachable", "The text-to-speech service is not reachable. Is it running?");
  }
  if (!response.ok) throw await errorFrom(response);
  return response.blob();
}

/** POST /tts. Resolves to {blob, text, voice, engine, duration}; rejects with ApiError. */
export async function speak({ text, voice, speed, reply, engine, signal }) {
  const body = { text, reply };
  if (voice) body.voice = voice;
  if (engine) body.engine = engine;
  if (speed && speed !== 1) body.speed = speed;
  let response;
  try {
    response = await fetch("tts", {
      method: "POST",
      headers: withKey({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, "tts_unreachable", "The text-to-speech service is not reachable. Is it running?");
  }
  if (!response.ok) throw await errorFrom(response);
  const header = response.headers.get("X-Reply-Text");
  let said = text;
  if (header !== null) {
    try {
      said = decodeURIComponent(header);
    } catch {
      said = header;
    }
  }
  return {
    blob: await response.blob(),
    text: said,
    voice: response.headers.get("X-Voice"),
    engine: response.headers.get("X-Engine"),
    duration: Number(response.headers.get("X-Audio-Duration")) || null,
  };
}

const LLM_CODES = new Set(["llm_unavailable", "llm_model_not_found", "llm_timeout", "llm_error"]);

export function isLlmError(err) {
  return err instanceof ApiError && LLM_CODES.has(err.code);
}

const LLM_NAMES = { ollama: "Ollama", openai: "OpenAI-compatible server" };

/** The page's name for the LLM server of llm.provider ("ollama" when it is not known). */
export function llmName(provider) {
  return LLM_NAMES[provider] || LLM_NAMES.ollama;
}

/**
 * A title and a sentence a user understands, from an ApiError (the server's message is kept: it says
 * what to do). `llm` ({name, url}) names the LLM server in the titles of its errors.
 */
export function explain(err, llm = { name: llmName(), url: null }) {
  if (!(err instanceof ApiError)) return { title: "Something went wrong", detail: String((err && err.message) || err) };
  const where = llm.url ? ` at ${llm.url}` : "";
  switch (err.code) {
    case "llm_unavailable":
      return { title: `${llm.name} is not running${where}`, detail: err.message };
    case "llm_model_not_found":
      return { title: `${llm.name} does not have the model`, detail: err.message };
    case "llm_timeout":
      return { title: `${llm.name} took too long to answer`, detail: err.message };
    case "llm_error":
      return { title: `${llm.name} failed to answer`, detail: err.message };
    case "text_too_long":
    case "request_too_large":
      return { title: "The text is too long", detail: err.message };
    case "empty_text":
      return { title: "There is nothing to say", detail: "Type some words first." };
    case "voice_not_found":
      return { title: "That voice is not available", detail: err.message };
    case "invalid_voice_name":
      return { title: "That voice name is not valid", detail: err.message };
    case "invalid_voice":
      return { title: "That voice cannot be used", detail: err.message };
    case "voice_conflict":
      return { title: "That cannot be done to this voice", detail: err.message };
    case "catalog_unavailable":
      return { title: "The voice catalog cannot be reached", detail: err.message };
    case "invalid_speed":
      return { title: "That speed is not allowed", detail: err.message };
    case "engine_busy":
      return { title: "The voice engine is busy", detail: `${err.message} Try again in a few seconds.` };
    case "engine_loading":
      return { title: "The voice is still loading", detail: `${err.message} Try again in a few seconds.` };
    case "unauthorized":
      return { title: "The API key was not accepted", detail: `${err.message} Reload the page to enter another.` };
    case "forbidden":
      return { title: "This API key may not do that", detail: err.message };
    case "rate_limited":
      return { title: "Too many requests for this API key", detail: err.message };
    case "tts_unreachable":
      return { title: "The text-to-speech service is not reachable", detail: "Start it (make run starts both services) and reload this page." };
    default:
      return { title: `The text-to-speech service reported a problem (${err.code})`, detail: err.message };
  }
}
