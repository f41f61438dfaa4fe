// The latency table of the Status panel: how long each stage of the last turns took, as the services
// measured it (and, for the first sound, as this page heard it).
import { $, el } from "./dom.js";
import { timings } from "./store.js";

const MAX_TURNS_SHOWN = 4;

const ms = (value) => (value === null || value === undefined || !Number.isFinite(value) ? "–" : value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(2)} s`);
const seconds = (s) => (s === null || s === undefined || !Number.isFinite(s) ? null : ms(s * 1000));
const factor = (x) => (x === null || x === undefined || !Number.isFinite(x) ? null : `${x < 0.1 ? x.toFixed(3) : x.toFixed(2)}×`);
const dig = (object, ...path) => path.reduce((value, key) => (value === null || value === undefined ? null : value[key]), object);

/** Rows of the latency table: [stage id, label, value of a turn], grouped by service. */
const STAGES = [
  ["Speech to text", [
    ["stt_final", "Speech end → text", (t) => seconds(dig(t.stt, "speech_end_to_transcript_s")) ?? (t.sttLatency !== null ? ms(t.sttLatency) : null)],
    ["stt_transcribe", "Transcribing", (t) => seconds(dig(t.stt, "transcribe_s"))],
    ["stt_rtf", "Real-time factor", (t) => factor(dig(t.stt, "real_time_factor"))],
  ]],
  ["Language model", [
    ["llm_ttft", "First token", (t) => seconds(dig(t.server, "llm", "time_to_first_token_s"))],
    ["llm_rate", "Speed", (t) => {
      const rate = dig(t.server, "llm", "tokens_per_s");
      return rate === null || !Number.isFinite(rate) ? null : `${rate.toFixed(rate < 10 ? 1 : 0)} tok/s`;
    }],
  ]],
  ["Text to speech", [
    ["tts_ttfa", "First audio", (t) => seconds(dig(t.server, "tts", "time_to_first_audio_s"))],
    ["tts_rtf", "Real-time factor", (t) => factor(dig(t.server, "tts", "real_time_factor"))],
  ]],
  ["Waiting for a worker", [
    ["queue_stt", "Speech to text", (t) => seconds(dig(t.stt, "queue_wait_s"))],
    ["queue_tts", "Text to speech", (t) => seconds(dig(t.server, "queue", "wait_s"))],
  ]],
  ["Heard in this page", [
    ["page_first_audio", "Text → first audio", (t) => (t.firstAudio !== null ? ms(t.firstAudio) : null)],
  ]],
];

/**
 * A turn: {number, sttLatency, stt, server, firstAudio, interrupted}, filled in as its figures come.
 * Recording it again after a change redraws the table.
 */
export function recordTurn(turn) {
  if (!timings.turns.includes(turn)) {
    timings.turns.unshift(turn);
    timings.turns.length = Math.min(timings.turns.length, MAX_TURNS_SHOWN);
  }
  renderTurns();
}

function renderTurns() {
  const table = $("latency");
  const turns = timings.turns; // recordTurn has just added one; "No turns yet." is only the page's start
  const head = el("tr", {}, el("th", { scope: "col", text: "Stage" }));
  for (const t of turns) {
    const th = el("th", { scope: "col", "data-turn": String(t.number), text: `#${t.number}` });
    if (t.interrupted) {
      th.classList.add("cut");
      th.title = "interrupted: no generation_complete, so no LLM and TTS figures";
      th.append(el("span", { class: "cut-mark", text: " (cut)" }));
    }
    head.append(th);
  }
  table.querySelector("thead").replaceChildren(head);
  const rows = [];
  for (const [group, stages] of STAGES) {
    rows.push(el("tr", { class: "group" }, el("th", { scope: "rowgroup", colspan: String(turns.length + 1), text: group })));
    for (const [id, label, value] of stages) {
      const row = el("tr", { "data-stage": id }, el("th", { scope: "row", text: label }));
      for (const t of turns) {
        const shown = value(t);
        row.append(el("td", { "data-turn": String(t.number), class: shown === null ? "muted" : "", text: shown ?? "–" }));
      }
      rows.push(row);
    }
  }
  $("latency-rows").replaceChildren(...rows);
}
