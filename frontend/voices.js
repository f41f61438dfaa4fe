// The Voices panel: every voice of every engine (GET /v1/voices) with Preview, Make default and Delete;
// uploading a Piper voice or a clip to clone (POST /v1/voices); Piper's catalog with a download's
// progress bar (POST /v1/voices/download and its events). The Speak panel's voice list follows.
import { ApiError, explain, getJson, readEvents, send, speak as synthesize } from "./api.js";
import { $, el } from "./dom.js";
import { addProblem } from "./problems.js";
import { loadVoices as loadSpeakVoices } from "./speak.js";

const PREVIEW_TEXT = "Hello! This is how I sound.";

export function setupVoices() {
  $("voices-upload").addEventListener("submit", (event) => {
    event.preventDefault();
    upload();
  });
  $("catalog-open").addEventListener("click", () => loadCatalog());
  $("catalog-language").addEventListener("change", () => loadCatalog());
}

function setState(text, isError = false) {
  const node = $("voices-state");
  node.textContent = text;
  node.classList.toggle("error-text", isError);
}

function failed(err, key) {
  const { title, detail } = explain(err);
  setState(`${title}: ${detail}`, true);
  addProblem(title, detail, { key });
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return "";
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1e3))} kB`;
}

export async function loadVoiceTable() {
  try {
    const data = await getJson("v1/voices", { timeoutMs: 15000 });
    const rows = data.voices.map(voiceRow);
    $("voice-rows").replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: "6", text: "No voices." }))]));
  } catch (err) {
    if (err instanceof ApiError) failed(err, "voices-panel");
  }
}

function voiceRow(voice) {
  const action = (label, handler, extra = {}) => {
    const button = el("button", { type: "button", class: "secondary small-button", text: label, ...extra });
    button.addEventListener("click", () => handler(voice, button));
    return button;
  };
  const removable = voice.origin !== "local" && !voice.default;
  return el(
    "tr",
    { "data-voice": voice.id, "data-default": voice.default ? "true" : "false" },
    el("td", {}, el("strong", { text: voice.name }), voice.default ? el("span", { class: "badge", text: "default" }) : null),
    el("td", { text: voice.engine }),
    el("td", { text: [voice.language, voice.quality].filter(Boolean).join(" · ") }),
    el("td", { text: voice.speakers.length ? `${voice.origin} · ${voice.speakers.length} speakers` : voice.origin }),
    el("td", { text: size(voice.size_bytes) }),
    el(
      "td",
      { class: "voice-actions" },
      action("Preview", preview, { "data-action": "preview" }),
      voice.default ? null : action("Make default", makeDefault, { "data-action": "default" }),
      removable ? action("Delete", remove, { "data-action": "delete" }) : null,
    ),
  );
}

async function preview(voice, button) {
  button.disabled = true;
  setState(`Synthesizing with ${voice.name}…`);
  try {
    const result = await synthesize({ text: PREVIEW_TEXT, voice: voice.name, engine: voice.engine, reply: false });
    const audio = $("voices-audio");
    if (audio.dataset.url) URL.revokeObjectURL(audio.dataset.url);
    audio.dataset.url = audio.src = URL.createObjectURL(result.blob);
    audio.dataset.voice = voice.id;
    setState(`${voice.name} (${voice.engine}): ${result.duration ? `${result.duration.toFixed(1)} s` : "ready"}`);
    audio.play().catch(() => {});
  } catch (err) {
    failed(err, "voice-preview");
  } finally {
    button.disabled = false;
  }
}

async function makeDefault(voice) {
  try {
    await send("v1/voices/default", { method: "PUT", json: { voice: voice.name, engine: voice.engine } });
    setState(`${voice.name} is the default voice of ${voice.engine} now.`);
    await Promise.all([loadVoiceTable(), loadSpeakVoices()]);
  } catch (err) {
    failed(err, "voice-default");
  }
}

async function remove(voice) {
  if (!window.confirm(`Delete the voice ${voice.name} (${voice.engine})? Its files are removed.`)) return;
  try {
    await send(`v1/voices/${encodeURIComponent(voice.engine)}:${encodeURIComponent(voice.name)}`, { method: "DELETE" });
    setState(`${voice.name} was deleted.`);
    await Promise.all([loadVoiceTable(), loadSpeakVoices()]);
  } catch (err) {
    failed(err, "voice-delete");
  }
}

async function upload() {
  const form = new FormData();
  const name = $("upload-name").value.trim();
  form.append("name", name);
  for (const id of ["upload-language", "upload-description"]) {
    const value = $(id).value.trim();
    if (value) form.append(id.replace("upload-", ""), value);
  }
  const files = { model: $("upload-model").files[0], config: $("upload-config").files[0], file: $("upload-clip").files[0] };
  for (const [field, file] of Object.entries(files)) if (file) form.append(field, file);
  setState(`Uploading ${name}…`);
  try {
    const voice = await send("v1/voices", { form });
    setState(`${voice.name} was added (${voice.engine}, ${voice.origin}).`);
    $("voices-upload").reset();
    await Promise.all([loadVoiceTable(), loadSpeakVoices()]);
  } catch (err) {
    failed(err, "voice-upload");
  }
}

async function loadCatalog() {
  const language = $("catalog-language").value.trim();
  $("catalog").hidden = false;
  try {
    const data = await getJson(`v1/voices/catalog${language ? `?language=${encodeURIComponent(language)}` : ""}`, { timeoutMs: 30000 });
    const rows = data.voices.map((voice) => {
      const button = el("button", { type: "button", class: "secondary small-button", text: voice.installed ? "Installed" : "Download", "data-action": "download" });
      button.disabled = voice.installed;
      button.addEventListener("click", () => download(voice, button));
      return el(
        "tr",
        { "data-catalog": voice.id },
        el("td", { text: voice.id }),
        el("td", { text: [voice.language_name || voice.language, voice.quality].filter(Boolean).join(" · ") }),
        el("td", { text: size(voice.size_bytes) }),
        el("td", {}, button),
      );
    });
    $("catalog-rows").replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: "4", text: "No voices match." }))]));
  } catch (err) {
    failed(err, "catalog");
  }
}

async function download(voice, button) {
  button.disabled = true;
  const bar = $("download-progress");
  bar.hidden = false;
  bar.max = voice.size_bytes;
  bar.value = 0;
  $("download-label").textContent = `Downloading ${voice.id}…`;
  try {
    const job = await send("v1/voices/download", { json: { id: voice.id } });
    let last = job;
    await readEvents(`v1/voices/download/${job.id}/events`, (_, data) => {
      last = data;
      bar.value = data.bytes_done;
      bar.dataset.bytes = String(data.bytes_done);
      bar.dataset.state = data.state;
    });
    if (last.state !== "done") throw new ApiError(0, last.error.code, last.error.message);
    $("download-label").textContent = `${voice.id} is installed.`;
    button.textContent = "Installed";
    await Promise.all([loadVoiceTable(), loadSpeakVoices()]);
  } catch (err) {
    $("download-label").textContent = `${voice.id} was not installed.`;
    button.disabled = false;
    failed(err, "download");
  }
}
