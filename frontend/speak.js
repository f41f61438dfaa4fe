// The Speak panel: words typed here are spoken (or answered, then spoken) with POST /tts and played in
// the page's <audio>, with a WAV to download. Its voice and speed are the ones Talk's replies use too.
import { ApiError, explain, getJson, speak as synthesize } from "./api.js";
import { $ } from "./dom.js";
import { loadPrefs, savePrefs } from "./prefs.js";
import { addProblem } from "./problems.js";
import { llmServer, ttsSettings } from "./settings.js";
import { assistantStarts, assistantStops, speak } from "./store.js";

export function setupSpeak() {
  $("speak-text").addEventListener("input", updateCount);
  $("speed").addEventListener("input", () => {
    $("speed-value").textContent = `${Number($("speed").value).toFixed(1)}×`;
  });
  for (const id of ["voice", "speed"]) $(id).addEventListener("change", savePrefs);
  $("speak-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  // While the Speak player plays, the microphone is not fed either (whoever pressed play).
  const audio = $("speak-audio");
  audio.addEventListener("play", () => {
    if (speak.playing) return;
    speak.playing = true;
    assistantStarts();
  });
  const release = () => {
    if (!speak.playing) return;
    speak.playing = false;
    assistantStops();
  };
  for (const type of ["pause", "ended", "error", "emptied"]) audio.addEventListener(type, release);
}

/** The speed slider's range and the text limit, from the service's settings once they are known. */
export function applyLimits() {
  const tts = ttsSettings();
  if (!tts) return;
  const speed = $("speed");
  speed.min = String(tts.min_speed ?? 0.5);
  speed.max = String(tts.max_speed ?? 2);
  updateCount();
}

export async function loadVoices() {
  const select = $("voice");
  try {
    const data = await getJson("voices", { timeoutMs: 8000 });
    const chosen = select.value || loadPrefs().voice;
    const options = (data.voices || []).map((name) => new Option(name === data.default ? `${name} (default)` : name, name));
    select.replaceChildren(...options);
    if (!options.length) select.append(new Option("Default voice", ""));
    select.value = (data.voices || []).includes(chosen) ? chosen : data.default || "";
  } catch (err) {
    addProblem("The voices could not be listed", err instanceof ApiError ? `${err.message}` : String(err), { key: "voices" });
  }
}

function textLimit() {
  const tts = ttsSettings();
  return tts ? tts.max_text_length : null;
}

function updateCount() {
  const length = $("speak-text").value.length;
  const limit = textLimit();
  const count = $("speak-count");
  count.textContent = limit ? `${length.toLocaleString()} / ${limit.toLocaleString()}` : `${length.toLocaleString()} characters`;
  count.classList.toggle("over", Boolean(limit && length > limit));
}

function setSpeakState(text, isError = false) {
  const node = $("speak-state");
  node.textContent = text;
  node.classList.toggle("error-text", isError);
}

async function submit() {
  const text = $("speak-text").value;
  const limit = textLimit();
  if (!text.trim()) {
    setSpeakState("Type some words first.", true);
    $("speak-text").focus();
    return;
  }
  if (limit && text.length > limit) {
    const title = "The text is too long";
    const detail = `It has ${text.length.toLocaleString()} characters; the limit is ${limit.toLocaleString()} (tts.max_text_length). Shorten it or split it.`;
    setSpeakState(`${title}: ${detail}`, true);
    addProblem(title, detail, { key: "text_too_long" });
    return;
  }
  if (speak.request) speak.request.abort();
  speak.request = new AbortController();
  const play = $("speak-play");
  const reply = $("speak-reply").checked;
  play.disabled = true;
  setSpeakState(reply ? "Asking the assistant…" : "Synthesizing…");
  try {
    const result = await synthesize({ text, reply, voice: $("voice").value, speed: Number($("speed").value), signal: speak.request.signal });
    const audio = $("speak-audio");
    if (audio.dataset.url) URL.revokeObjectURL(audio.dataset.url);
    const url = URL.createObjectURL(result.blob);
    audio.dataset.url = url;
    audio.src = url;
    audio.hidden = false;
    const download = $("speak-download");
    download.href = url;
    download.download = `speech-${result.voice || "voice"}.wav`;
    download.removeAttribute("aria-disabled");
    download.removeAttribute("tabindex");
    setSpeakState(`${result.duration ? `${result.duration.toFixed(1)} s` : "Ready"} · ${result.voice || ""}${$("speak-reply").checked ? ` · “${result.text}”` : ""}`);
    audio.play().catch(() => setSpeakState("Ready: press play on the player below."));
  } catch (err) {
    if (err && err.name === "AbortError") return;
    const { title, detail } = explain(err, llmServer());
    setSpeakState(`${title}: ${detail}`, true);
    addProblem(title, detail, { key: err.code === "llm_unavailable" ? "llm-down" : err.code || "speak" });
    if (err.code === "voice_not_found") loadVoices();
  } finally {
    play.disabled = false;
  }
}
