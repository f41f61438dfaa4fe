// The Documents panel: a text or SSML pasted whole, or blocks built here (each with its pause after it),
// rendered as a job (POST v1/speech/jobs) in the Speak panel's voice; its progress is polled into the bar,
// and the result is played here and offered for download. A running job can be cancelled.
import { ApiError, deleteJson, getBlob, getJson, postJson } from "./api.js";
import { $, el } from "./dom.js";

const POLL_MS = 400;
const ENDED = new Set(["done", "failed", "cancelled"]);
let current = null;

export function setupDocuments() {
  $("doc-add-block").addEventListener("click", () => addBlock());
  $("doc-cancel").addEventListener("click", cancel);
  $("doc-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
}

function addBlock() {
  const index = $("doc-blocks").children.length + 1;
  const text = el("textarea", { rows: "2", class: "doc-block-text", "aria-label": `Block ${index}: text or SSML` });
  const pause = el("input", { type: "number", min: "0", step: "100", value: "0", class: "doc-block-pause", "aria-label": `Block ${index}: pause after, in ms` });
  const remove = el("button", { type: "button", class: "secondary doc-block-remove", text: "Remove" });
  const row = el("div", { class: "doc-block" }, text, el("label", { class: "small" }, "Pause after (ms) ", pause), remove);
  remove.addEventListener("click", () => row.remove());
  $("doc-blocks").append(row);
  text.focus();
}

/** The document to send: the blocks built, or else the pasted text (SSML when it starts with <speak). */
function documentBody() {
  const body = { format: $("doc-format").value };
  const voice = $("voice").value;
  if (voice) body.voice = voice;
  const blocks = [...document.querySelectorAll("#doc-blocks .doc-block")]
    .map((row) => ({ text: row.querySelector(".doc-block-text").value, pause_after_ms: Number(row.querySelector(".doc-block-pause").value) || 0 }))
    .filter((block) => block.text.trim());
  if (blocks.length) body.blocks = blocks;
  else body.text = $("doc-text").value;
  return body;
}

function show(text, { error = false, state = "" } = {}) {
  const node = $("doc-state");
  node.textContent = text;
  node.classList.toggle("error-text", error);
  $("doc-form").dataset.state = state;
}

function running(yes) {
  $("doc-submit").disabled = yes;
  $("doc-cancel").hidden = !yes;
}

async function submit() {
  const audio = $("doc-audio");
  audio.hidden = true;
  const link = $("doc-download");
  link.setAttribute("aria-disabled", "true");
  link.removeAttribute("href");
  $("doc-progress").value = 0;
  show("Sending…", { state: "sending" });
  running(true);
  try {
    let job = await postJson("v1/speech/jobs", documentBody());
    current = job.id;
    while (!ENDED.has(job.state)) {
      show(`${job.state}: ${job.progress.parts_done} of ${job.progress.parts} parts, ${job.progress.audio_s.toFixed(1)} s of audio`, { state: job.state });
      $("doc-progress").value = job.progress.fraction;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      job = await getJson(`v1/speech/jobs/${job.id}`);
    }
    $("doc-progress").value = job.progress.fraction;
    if (job.state !== "done") {
      show(job.state === "failed" ? `Failed: ${job.reason}` : "Cancelled.", { error: job.state === "failed", state: job.state });
      return;
    }
    const url = URL.createObjectURL(await getBlob(`v1/speech/jobs/${job.id}/audio`));
    audio.src = url;
    audio.hidden = false;
    link.href = url;
    link.download = `speech.${job.format}`;
    link.setAttribute("aria-disabled", "false");
    link.tabIndex = 0;
    show(`Done: ${job.progress.audio_s.toFixed(1)} s of audio in ${job.timings.total_s} s.`, { state: "done" });
  } catch (err) {
    show(err instanceof ApiError ? err.message : String(err), { error: true, state: "error" });
  } finally {
    current = null;
    running(false);
  }
}

async function cancel() {
  if (!current) return;
  try {
    await deleteJson(`v1/speech/jobs/${current}`);
  } catch (err) {
    show(err instanceof ApiError ? err.message : String(err), { error: true, state: "error" });
  }
}
