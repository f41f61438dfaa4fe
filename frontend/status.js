// The Status panel and the health pills: both services' /health, polled, in words; a problem is
// reported when a service goes down (once, not on every poll). Talk hears whether STT can take a session.
import { ApiError, getJson, llmName } from "./api.js";
import { replyStream } from "./audio-out.js";
import { $, clock, el } from "./dom.js";
import { addProblem } from "./problems.js";
import { llmServer } from "./settings.js";
import { config, health, setSttProblem } from "./store.js";

const POLL_MS = 5000;

export function setupStatus() {
  replyStream.onConnection = () => refreshStatus(); // the Replies fact says "connected" as soon as it is
}

export function pollStatus() {
  setInterval(refreshStatus, POLL_MS);
}

export async function refreshStatus() {
  const [stt, tts] = await Promise.allSettled([getJson("api/stt/health"), getJson("health")]);
  if (stt.status === "fulfilled") showStt(stt.value);
  else showSttUnreachable(stt.reason);
  if (tts.status === "fulfilled") showTts(tts.value);
  else showTtsUnreachable();
  $("status-updated").textContent = `updated ${clock()}`;
}

function showStt(h) {
  const ok = h.status === "ok";
  setPill("pill-stt", ok ? "ok" : "warn", ok ? "healthy" : "degraded");
  renderService("svc-stt", ok ? "ok" : "warn", ok ? "healthy" : h.loading ? "loading the model" : "degraded", [
    ["Model", h.model],
    ["Device", h.device && h.compute_type ? `${h.device} · ${h.compute_type}` : h.device],
    ["Clients", h.max_connections ? `${h.connections} of ${h.max_connections}` : h.connections],
    ["Address", config.sttUrl],
  ], h.error);
  noteTransition("stt", ok, "Speech to text is degraded", h.error || "");
  if (ok) setSttProblem(null);
  else setSttProblem(h.loading ? "Speech to text is still loading its model" : "Speech to text is degraded", h.error || "");
}

function showSttUnreachable(err) {
  const detail = err instanceof ApiError && err.code === "stt_unavailable" ? err.message : `The status check failed (${err.message}).`;
  setPill("pill-stt", "down", "not reachable");
  renderService("svc-stt", "down", "not reachable", [["Address", config.sttUrl]], detail);
  noteTransition("stt", false, "The speech-to-text service is not reachable", detail);
  setSttProblem("The speech-to-text service is not reachable", detail);
}

function showTts(h) {
  const ok = h.status === "ok";
  const reasons = (h.reasons || []).join(" · ");
  const name = llmName(h.llm_provider);
  const url = llmServer().url;
  const reachable = h.llm_reachable;
  const where = url ? ` at ${url}` : "";
  setPill("pill-tts", ok ? "ok" : "warn", ok ? "healthy" : "degraded");
  $("pill-llm").querySelector('[data-role="name"]').textContent = name;
  const llmState = !reachable ? ["down", "not reachable"]
    : h.llm_failure ? ["warn", "failing"]  // it answers, with server errors
    : h.llm_model_available === false ? ["warn", `model ${h.llm_model} missing`] : ["ok", "reachable"];
  setPill("pill-llm", ...llmState);
  renderService("svc-tts", ok ? "ok" : "warn", ok ? "healthy" : "degraded", [
    ["Engine", h.fallback ? `${h.engine} (fallback for ${h.configured_engine})` : h.engine],
    ["Voice", h.voice ? `${h.voice}${h.voice_loaded ? "" : " (not loaded yet)"}` : null],
    ["LLM", `${h.llm_model} · ${name} ${reachable ? "reachable" : "not reachable"}${where}`],
    ["Workers", h.workers ? `${h.workers.running} busy, ${h.workers.waiting} waiting, ${h.workers.max_concurrent} max` : null],
    ["Replies", replyStream.open ? "streamed over /ws/tts (connected)" : "streamed over /ws/tts (not connected yet)"],
  ], reasons);
  health.tts = true;
  if (health.llm !== false && reachable === false) {
    const start = h.llm_provider === "openai" ? "start it" : "start Ollama (ollama serve)";
    addProblem(`${name} is not running${where}`, `Replies need it: ${start} or set llm.url. You can still have your words spoken.`, { key: "llm-down" });
  }
  health.llm = reachable;
}

function showTtsUnreachable() {
  setPill("pill-tts", "down", "not reachable");
  setPill("pill-llm", "unknown", "unknown");
  renderService("svc-tts", "down", "not reachable", [], "The text-to-speech service (which serves this page) does not answer. Start it again (make run) and reload.");
  noteTransition("tts", false, "The text-to-speech service is not reachable", "Start it again (make run) and reload this page.");
}

function setPill(id, status, text) {
  const pill = $(id);
  pill.dataset.state = status;
  pill.querySelector('[data-role="state"]').textContent = text;
  pill.title = text;
}

function renderService(id, status, badge, facts, reason) {
  const box = $(id);
  box.dataset.state = status;
  box.querySelector('[data-role="badge"]').textContent = badge;
  box.querySelector('[data-role="facts"]').replaceChildren(
    ...facts.filter(([, v]) => v !== undefined && v !== null && v !== "").flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]),
  );
  const why = box.querySelector('[data-role="reason"]');
  why.hidden = !reason;
  why.textContent = reason || "";
}

function noteTransition(name, ok, title, detail) {
  const previous = health[name];
  health[name] = ok;
  if (previous !== false && ok === false) addProblem(title, detail, { key: `${name}-down` });
}
