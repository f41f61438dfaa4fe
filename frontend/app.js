// The dashboard: Talk (microphone -> STT -> streamed reply -> speech, with barge-in), Speak, Status,
// problems, Settings.
import { ApiError, explain, getJson, isLlmError, speak } from "./api.js";
import { StreamPlayer } from "./player.js";
import { TtsSocket } from "./tts-socket.js";
import { MicCapture, SttSocket, microphoneAvailable } from "./voice.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 5000;
const LOUD_RMS = 0.01; // about -40 dBFS: above it a frame counts as "the microphone heard a voice"
const MAX_PENDING_FRAMES = 125; // 5 s of 40 ms frames kept while the socket connects
const MAX_TURNS_SHOWN = 4;

const state = {
  config: null,
  sttUrl: null,
  mode: "handsfree",
  bargeIn: true, // "Let me interrupt": the microphone stays live while the assistant speaks
  current: null, // the reply being generated or played: {generation, playback, bubble, turn}
  bargeIns: 0,
  mic: null,
  stt: null,
  connecting: false,
  live: false,
  holding: false,
  endWhenReady: false,
  stopping: null,
  assistantBusy: 0,
  pending: [],
  samplesSent: 0,
  lastLoudAt: null,
  releasedAt: null,
  turns: [],
  turnChain: Promise.resolve(),
  turnCount: 0,
  problemKeys: new Map(),
  health: { stt: null, tts: null },
};

const player = new StreamPlayer();
const tts = new TtsSocket({
  onConnection: () => refreshStatus(),
  onProblem: (code, message) => addProblem("The text-to-speech service refused something", `${message} (${code})`, { key: `tts-${code}` }),
});
const replyStream = tts; // named apart from refreshStatus's `tts` (the /health answer)
// For the browser's console (and the tests): what plays, what the reply stream did.
window.dashboard = { player, tts, state };

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const ms = (value) => (value === null || value === undefined || !Number.isFinite(value) ? "–" : value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(2)} s`);
const clock = () => new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

// ---------------------------------------------------------------- problems

function addProblem(title, detail = "", { key = title, actions = [] } = {}) {
  const list = $("problem-list");
  const empty = list.querySelector(".empty");
  if (empty) empty.remove();
  // The same problem again (say, the status poll and a failed request): one entry, the newest words, a count.
  const existing = state.problemKeys.get(key);
  let count = 1;
  if (existing && existing.isConnected) {
    count = Number(existing.dataset.count || 1) + 1;
    existing.remove();
  }
  const item = el(
    "li",
    { class: "problem", "data-key": key, "data-count": String(count) },
    el(
      "div",
      { class: "problem-head" },
      el("strong", { text: title }),
      el("span", { class: "problem-time muted small", text: count > 1 ? `${clock()} · ${count}×` : clock() }),
    ),
    detail ? el("p", { text: detail }) : null,
  );
  if (actions.length) item.append(el("div", { class: "problem-actions" }, ...actions));
  list.prepend(item);
  state.problemKeys.set(key, item);
  while (list.children.length > 8) list.lastElementChild.remove();
  $("problems-clear").hidden = false;
  return item;
}

$("problems-clear").addEventListener("click", () => {
  $("problem-list").replaceChildren(el("li", { class: "empty", text: "None so far." }));
  state.problemKeys.clear();
  $("problems-clear").hidden = true;
});

// ---------------------------------------------------------------- configuration

async function loadConfig() {
  try {
    state.config = await getJson("api/config");
  } catch (err) {
    state.config = null;
    $("config-source").textContent =
      err instanceof ApiError && err.status === 404
        ? "This TTS service does not serve /api/config (an older version?): assuming the STT service on port 8010 of this host."
        : `The configuration could not be read (${err.message}).`;
  }
  const stt = (state.config && state.config.stt) || { port: 8010, ws_path: "/ws/stt", use_page_host: true, host: location.hostname };
  const override = new URLSearchParams(location.search).get("stt");
  const secure = location.protocol === "https:";
  const host = stt.use_page_host ? location.hostname : stt.host;
  const hostPart = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  state.sttUrl = override || `${secure ? "wss" : "ws"}://${hostPart}:${stt.port}${stt.ws_path || "/ws/stt"}`;
  const httpBase = state.sttUrl.replace(/^ws/, "http").replace(/\/ws\/stt.*$/, "");
  for (const id of ["docs-stt", "footer-stt-docs"]) $(id).href = `${httpBase}/docs`;
  if (state.config) renderConfig(state.config);
  applyLimits();
}

function renderConfig(config) {
  $("footer-version").textContent = `Voice assistant ${config.version || ""}`.trim();
  $("config-source").textContent = config.config_file ? `Read from ${config.config_file}, then the environment.` : "Built-in defaults and the environment (no config file).";
  const tables = [];
  // Top-level values (environment) first as "general", then the sections in a reading order.
  const general = {};
  const sections = {};
  for (const [key, value] of Object.entries(config.settings || {})) {
    if (value && typeof value === "object" && !Array.isArray(value)) sections[key] = value;
    else general[key] = value;
  }
  const order = ["stt", "tts", "llm", "logging", "supervisor"];
  const names = Object.keys(sections).sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99));
  const ordered = [...(Object.keys(general).length ? [["general", general]] : []), ...names.map((name) => [name, sections[name]])];
  for (const [section, values] of ordered) {
    const rows = [];
    const walk = (prefix, value) => {
      if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
        for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix}.${k}` : k, v);
        return;
      }
      let shown = value;
      let cls = "";
      if (value === null) {
        shown = "null";
        cls = "muted";
      } else if (typeof value === "string" && /^\*+$/.test(value)) {
        shown = "hidden";
        cls = "secret";
      } else if (typeof value !== "string") {
        shown = JSON.stringify(value);
      }
      rows.push(el("tr", {}, el("th", { scope: "row", text: prefix }), el("td", { class: cls, text: String(shown) })));
    };
    if (values && typeof values === "object") walk("", values);
    else rows.push(el("tr", {}, el("th", { scope: "row", text: section }), el("td", { text: String(values) })));
    tables.push(
      el(
        "div",
        { class: "config-section" },
        el("h3", { text: section }),
        el("table", { class: "config" }, el("tbody", {}, ...rows)),
      ),
    );
  }
  $("config-tables").replaceChildren(...tables);
}

function applyLimits() {
  const tts = state.config && state.config.settings && state.config.settings.tts;
  if (!tts) return;
  const speed = $("speed");
  speed.min = String(tts.min_speed ?? 0.5);
  speed.max = String(tts.max_speed ?? 2);
  updateCount();
}

// ---------------------------------------------------------------- secure context

function checkSecureContext() {
  if (microphoneAvailable()) return true;
  $("secure-notice").hidden = false;
  $("secure-origin").textContent = location.origin;
  // The page's own port is the TTS service's (it serves this page); the config's may sit behind a proxy.
  const ttsPort = location.port || (state.config && state.config.tts && state.config.tts.port) || 8000;
  const sttPort = (state.config && state.config.stt && state.config.stt.port) || 8010;
  $("secure-local").href = `http://localhost:${ttsPort}/`;
  $("secure-local").textContent = `http://localhost:${ttsPort}/`;
  $("secure-ssh-open").textContent = `http://localhost:${ttsPort}`;
  $("secure-ssh").textContent = `ssh -L ${ttsPort}:localhost:${ttsPort} -L ${sttPort}:localhost:${sttPort} you@${location.hostname}`;
  const mic = $("mic");
  mic.disabled = true;
  $("mic-label").textContent = "Microphone unavailable";
  $("mic-hint").textContent = "This address is not a secure page, so the browser keeps the microphone off. See the note above.";
  setTalkState("blocked", "Microphone unavailable on this address");
  return false;
}

// ---------------------------------------------------------------- talk: microphone and STT session

function setTalkState(name, text) {
  const node = $("talk-state");
  node.dataset.state = name;
  node.textContent = text;
  $("talk").dataset.state = name;
}

function idleState() {
  if (state.live) {
    if (state.mode === "ptt") setTalkState("ready", state.holding ? "Listening…" : "Ready: hold the button while you speak");
    else setTalkState("listening", "Listening…");
  } else setTalkState("off", "Microphone off");
}

function updateMicButton() {
  const mic = $("mic");
  if (mic.disabled) return;
  const ptt = state.mode === "ptt";
  const active = ptt ? state.holding : state.live || state.connecting;
  mic.setAttribute("aria-pressed", String(active));
  mic.classList.toggle("active", active);
  $("mic-label").textContent = ptt ? (state.holding ? "Listening… release to send" : "Hold to talk") : state.live || state.connecting ? "Stop" : "Start talking";
  $("mic-hint").textContent = ptt
    ? "Hold the button (or Space while it has focus) while you speak; release to send."
    : "Press to start. The assistant listens until you press again and answers each time you pause.";
  $("mic-off").hidden = !(ptt && state.live);
}

function feeding() {
  if (state.stopping) return false;
  // Without barge-in, the microphone is not fed while the assistant thinks or speaks (no self-listening);
  // with it, echo cancellation keeps the assistant's voice out and the user can cut it off.
  if (!state.bargeIn && state.assistantBusy > 0) return false;
  return state.mode === "handsfree" || state.holding;
}

function onFrame(buffer, rms) {
  const bar = $("level-bar");
  bar.style.transform = `scaleX(${Math.min(1, Math.sqrt(rms) * 2.2).toFixed(3)})`;
  if (!feeding()) return;
  if (!state.stt || !state.stt.open) {
    if (state.connecting) {
      state.pending.push([buffer, rms]);
      if (state.pending.length > MAX_PENDING_FRAMES) state.pending.shift();
    }
    return;
  }
  send(buffer, rms);
}

function send(buffer, rms) {
  state.stt.sendAudio(buffer);
  state.samplesSent += buffer.byteLength / 2;
  if (rms > LOUD_RMS) state.lastLoudAt = performance.now();
  renderAudioStats();
}

function renderAudioStats() {
  const rate = (state.stt && state.stt.ready && state.stt.ready.sample_rate) || 16000;
  const seconds = state.samplesSent / rate;
  const input = state.mic && state.mic.inputRate ? ` (microphone at ${(state.mic.inputRate / 1000).toFixed(1)} kHz)` : "";
  $("audio-stats").textContent = `Audio sent this session: ${seconds.toFixed(1)} s as ${rate / 1000} kHz PCM16${input}.`;
  $("audio-stats").dataset.samples = String(state.samplesSent);
}

async function startSession() {
  if (state.live || state.connecting) return;
  state.connecting = true;
  state.pending = [];
  state.samplesSent = 0;
  updateMicButton();
  setTalkState("connecting", "Starting the microphone…");
  const targetRate = (state.config && state.config.stt && state.config.stt.sample_rate) || 16000;
  const mic = new MicCapture({ targetRate, onFrame, echoCancellation: state.bargeIn });
  try {
    await mic.start();
  } catch (err) {
    state.connecting = false;
    state.holding = false;
    addProblem(err.title || "The microphone could not be started", err.detail || String(err), { key: "mic" });
    setTalkState("error", err.title || "Microphone error");
    updateMicButton();
    return;
  }
  state.mic = mic;
  setTalkState("connecting", "Connecting to the speech-to-text service…");
  const stt = new SttSocket(state.sttUrl, {
    onTranscript: onTranscript,
    onPartial: (m) => showPartial(m.text || ""),
    onSpeechStarted: onSpeechStarted,
    onNoSpeech: () => {
      showPartial("");
      finishStopping();
      if (state.mode === "ptt") setTalkState("ready", "No speech heard: hold the button while you speak");
    },
    onBufferLimit: (m) => addProblem("Too much audio is waiting to be transcribed", `The service holds at most ${m.limit} s; audio beyond it was dropped. Pause for a moment.`, { key: "buffer" }),
    onServerError: (m) => {
      if (m.code === "too_many_connections" || m.code === "model_unavailable") return; // the close that follows reports it
      addProblem("The speech-to-text service refused something", `${m.message} (${m.code})`, { key: `stt-${m.code}` });
    },
    onClosed: (err) => {
      if (state.stt !== stt) return; // an older session closing late
      endSession();
      if (err) {
        addProblem(err.title, err.detail, { key: `stt-closed-${err.code}` });
        setTalkState("error", `${err.title}. ${err.detail}`);
      }
    },
  });
  state.stt = stt;
  try {
    await stt.connect();
  } catch (err) {
    mic.stop();
    state.mic = null;
    state.stt = null;
    state.connecting = false;
    state.holding = false;
    addProblem(err.title || "Could not connect", err.detail || String(err), { key: err.code === "unreachable" ? "stt-down" : `stt-connect-${err.code}` });
    setTalkState("error", err.title || "Could not connect");
    updateMicButton();
    refreshStatus();
    return;
  }
  state.connecting = false;
  state.live = true;
  for (const [buffer, rms] of state.pending) send(buffer, rms);
  state.pending = [];
  if (state.endWhenReady) {
    state.endWhenReady = false;
    state.releasedAt = performance.now();
    stt.sendJson({ type: "end" });
  }
  idleState();
  updateMicButton();
  renderAudioStats();
}

function endSession() {
  if (state.mic) state.mic.stop();
  if (state.stt) state.stt.close();
  if (state.stopping) clearTimeout(state.stopping);
  state.mic = state.stt = state.stopping = null;
  state.live = state.connecting = state.holding = false;
  $("level-bar").style.transform = "scaleX(0)";
  updateMicButton();
  idleState();
}

function stopSession() {
  if (!state.live) {
    if (!state.connecting) endSession();
    return;
  }
  // Stop the microphone, but let the words spoken so far come back before the socket closes.
  if (state.mic) state.mic.stop();
  state.mic = null;
  state.live = false;
  state.holding = false;
  state.releasedAt = performance.now();
  state.stt.sendJson({ type: "end" });
  state.stopping = setTimeout(endSession, 8000);
  $("level-bar").style.transform = "scaleX(0)";
  updateMicButton();
  setTalkState("thinking", "Finishing…");
}

function finishStopping() {
  if (state.stopping) endSession();
}

function pressStart() {
  if (state.mode !== "ptt" || state.holding) return;
  state.holding = true;
  state.lastLoudAt = null;
  updateMicButton();
  if (!state.live) startSession();
  else idleState();
}

function pressEnd() {
  if (state.mode !== "ptt" || !state.holding) return;
  state.holding = false;
  updateMicButton();
  if (state.stt && state.stt.open) {
    state.releasedAt = performance.now();
    state.stt.sendJson({ type: "end" });
    setTalkState("thinking", "Transcribing…");
  } else if (state.connecting) {
    state.endWhenReady = true;
  }
}

const micButton = $("mic");
micButton.addEventListener("click", () => {
  player.context(); // a click lets the page play the replies that follow
  if (state.mode !== "handsfree") return;
  if (state.live || state.connecting) stopSession();
  else startSession();
});
micButton.addEventListener("pointerdown", (event) => {
  if (state.mode !== "ptt" || event.button !== 0) return;
  player.context();
  micButton.setPointerCapture?.(event.pointerId);
  pressStart();
});
for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) micButton.addEventListener(type, pressEnd);
micButton.addEventListener("keydown", (event) => {
  if (state.mode !== "ptt" || (event.key !== " " && event.key !== "Enter")) return;
  event.preventDefault();
  player.context();
  if (!event.repeat) pressStart();
});
micButton.addEventListener("keyup", (event) => {
  if (state.mode !== "ptt" || (event.key !== " " && event.key !== "Enter")) return;
  event.preventDefault();
  pressEnd();
});
micButton.addEventListener("blur", pressEnd);
micButton.addEventListener("contextmenu", (event) => state.mode === "ptt" && event.preventDefault());
$("mic-off").addEventListener("click", () => {
  endSession();
  micButton.focus();
});
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.addEventListener("change", () => {
    state.mode = radio.value;
    state.holding = false;
    if (state.live && state.mode === "ptt" && state.stt) state.stt.sendJson({ type: "reset" });
    updateMicButton();
    idleState();
  });
}

// ---------------------------------------------------------------- talk: turns

function conversation() {
  const list = $("conversation");
  const empty = list.querySelector(".empty");
  if (empty) empty.remove();
  return list;
}

function addBubble(role, text, meta = "") {
  const bubble = el(
    "li",
    { class: `turn ${role}`, "data-role": role },
    el("span", { class: "who", text: role === "user" ? "You" : "Assistant" }),
    el("p", { class: "words", text }),
    el("span", { class: "meta muted small", text: meta }),
  );
  const list = conversation();
  list.append(bubble);
  bubble.scrollIntoView({ block: "nearest" });
  return bubble;
}

/** Words heard so far in the current utterance, in a faint bubble that the final transcript replaces.
 * Hidden from screen readers: the conversation is a live region, and partials would chatter. */
function showPartial(text) {
  let ghost = $("conversation").querySelector(".turn.partial");
  if (!text.trim()) {
    if (ghost) ghost.remove();
    return;
  }
  if (!ghost) {
    ghost = addBubble("user", "", "hearing…");
    ghost.classList.add("partial");
    ghost.setAttribute("aria-hidden", "true");
  }
  ghost.querySelector(".words").textContent = text;
  $("conversation").append(ghost);
}

function onTranscript(message) {
  showPartial("");
  const now = performance.now();
  const speechEnd = message.reason === "end" && state.releasedAt ? state.releasedAt : state.lastLoudAt;
  const sttLatency = speechEnd ? Math.max(0, now - speechEnd) : null;
  finishStopping();
  const text = (message.text || "").trim();
  const bubble = addBubble("user", text || "(nothing recognisable)", `${message.duration.toFixed(1)} s of audio · ${message.reason}`);
  bubble.dataset.duration = String(message.duration);
  if (!text) {
    if (!state.current) idleState();
    return;
  }
  takeTurn(text, { sttLatency, stt: message.timings || null, heardAt: now });
}

/** The service heard the user start speaking: with barge-in on, the assistant stops talking at once. */
function onSpeechStarted() {
  if (!state.bargeIn || !state.current) return;
  interrupt();
}

/** Stop the reply now: playback stops, the generation is cancelled, later audio of it is discarded. */
function interrupt() {
  const current = state.current;
  if (!current || current.interrupted) return;
  current.interrupted = true;
  current.playback.stop();
  const cancelSent = tts.cancel(current.generation);
  state.bargeIns += 1;
  $("talk").dataset.bargeIns = String(state.bargeIns);
  const bubble = current.bubble;
  bubble.dataset.state = "interrupted";
  bubble.classList.add("interrupted");
  bubble.querySelector(".meta").textContent = cancelSent ? "interrupted: you started speaking (the rest was not generated)" : "interrupted: you started speaking";
  if (current.turn) {
    current.turn.interrupted = true;
    recordTurn(current.turn);
  }
  setTalkState("listening", "Listening… (you interrupted)");
}

function takeTurn(text, timing) {
  state.assistantBusy += 1;
  const turn = { number: ++state.turnCount, sttLatency: timing.sttLatency, stt: timing.stt || null, server: null, firstAudio: null, interrupted: false };
  state.turnChain = state.turnChain
    .then(() => answer(text, timing, turn))
    .catch((err) => addProblem("Something went wrong", String(err)))
    .finally(() => {
      state.assistantBusy -= 1;
      if (state.assistantBusy === 0) idleState();
    });
}

async function answer(text, timing, turn) {
  setTalkState("thinking", "Thinking…");
  const bubble = addBubble("assistant", "…", "thinking");
  bubble.dataset.state = "pending";
  recordTurn(turn);
  try {
    await streamReply(bubble, { text, reply: true }, timing, turn);
  } catch (err) {
    if (isLlmError(err)) {
      const { title, detail } = explain(err, state.config && state.config.llm && state.config.llm.url);
      showBubbleError(bubble, title, detail);
      const instead = el("button", { type: "button", class: "secondary small-button", text: "Speak it instead" });
      instead.addEventListener("click", () => speakInstead(text, bubble, instead));
      bubble.append(el("div", { class: "turn-actions" }, instead));
      addProblem(title, detail, { key: err.code === "llm_unavailable" ? "llm-down" : err.code });
    } else {
      const { title, detail } = explain(err);
      showBubbleError(bubble, title, detail);
      addProblem(title, detail, { key: err.code || "tts" });
    }
    recordTurn(turn);
  }
}

function showBubbleError(bubble, title, detail) {
  bubble.classList.add("failed");
  bubble.dataset.state = "failed";
  bubble.querySelector(".words").textContent = title;
  bubble.querySelector(".meta").textContent = detail;
}

async function speakInstead(text, bubble, button) {
  player.context();
  button.disabled = true;
  button.textContent = "Speaking…";
  state.assistantBusy += 1;
  setTalkState("speaking", "Speaking your words…");
  try {
    bubble.classList.remove("failed");
    bubble.dataset.state = "pending";
    bubble.querySelector(".words").textContent = text;
    bubble.querySelector(".meta").textContent = "";
    button.parentElement.hidden = true;
    await streamReply(bubble, { text, reply: false }, null, null, "spoken back");
    button.parentElement.remove();
  } catch (err) {
    const { title, detail } = explain(err);
    showBubbleError(bubble, title, detail);
    addProblem(title, detail, { key: err.code || "tts" });
    button.parentElement.hidden = false;
    button.disabled = false;
    button.textContent = "Speak it instead";
  } finally {
    state.assistantBusy -= 1;
    if (state.assistantBusy === 0) idleState();
  }
}

/**
 * Ask /ws/tts for the reply (or to speak `text` as it is) and play it while it is generated: the words
 * grow with each reply_text, each audio chunk is scheduled as it arrives. Resolves when the audio has
 * played or was stopped; rejects with the service's error (e.g. llm_unavailable).
 */
async function streamReply(bubble, { text, reply }, timing, turn, label = "") {
  const words = bubble.querySelector(".words");
  const playback = player.begin(turn ? `turn-${turn.number}` : label || "reply");
  let blockedNoted = false;
  const generation = tts.generate(
    { text, reply, voice: $("voice").value, speed: Number($("speed").value) },
    {
      onStarted: () => {
        if (bubble.dataset.state === "pending") bubble.dataset.state = "streaming";
      },
      onText: (said) => {
        if (said) words.textContent = said;
      },
      onAudio: (meta, pcm) => {
        playback.enqueue(pcm, meta.sample_rate, meta);
        if (player.blocked && !blockedNoted) {
          blockedNoted = true;
          noteBlockedPlayback(bubble);
        }
      },
    },
  );
  const current = { generation, playback, bubble, turn, interrupted: false };
  state.current = current;
  playback.onPlaying = () => {
    if (current.interrupted) return;
    bubble.dataset.state = "playing";
    if (timing && turn) {
      turn.firstAudio = playback.startedAt - timing.heardAt;
      recordTurn(turn);
    }
    setTalkState("speaking", state.bargeIn && state.live ? "Speaking… (start talking to interrupt)" : "Speaking…");
  };
  try {
    const result = await generation.done;
    if (!result.cancelled) {
      if (result.text) words.textContent = result.text;
      const seconds = Number.isFinite(result.audio_seconds) ? `${result.audio_seconds.toFixed(1)} s` : "";
      bubble.querySelector(".meta").textContent = [label, result.voice, seconds].filter(Boolean).join(" · ");
      if (turn) {
        turn.server = result.timings || null;
        recordTurn(turn);
      }
      playback.finish();
    }
    const outcome = await playback.ended;
    bubble.dataset.state = current.interrupted ? "interrupted" : outcome === "ended" ? "played" : "stopped";
  } catch (err) {
    playback.stop();
    throw err;
  } finally {
    if (state.current === current) state.current = null;
  }
}

function noteBlockedPlayback(bubble) {
  const play = el("button", { type: "button", class: "secondary small-button", text: "Play the answer" });
  play.addEventListener("click", () => {
    player.context();
    play.parentElement.remove();
  });
  bubble.append(el("div", { class: "turn-actions" }, play));
  addProblem("The browser blocked playback", 'It plays sound only after a click on this page. Press "Play the answer".', { key: "autoplay" });
}

function recordTurn(turn) {
  if (!state.turns.includes(turn)) {
    state.turns.unshift(turn);
    state.turns.length = Math.min(state.turns.length, MAX_TURNS_SHOWN);
  }
  renderTurns();
}

// ---------------------------------------------------------------- latency of the last turns

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

function renderTurns() {
  const table = $("latency");
  const turns = state.turns;
  if (!turns.length) {
    table.querySelector("thead").replaceChildren(el("tr", {}, el("th", { scope: "col", text: "Stage" })));
    $("latency-rows").replaceChildren(el("tr", { class: "empty" }, el("td", { text: "No turns yet." })));
    return;
  }
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

$("type-form").addEventListener("submit", (event) => {
  event.preventDefault();
  player.context();
  const input = $("type-text");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  addBubble("user", text, "typed");
  takeTurn(text, { sttLatency: null, heardAt: performance.now() });
});

$("barge-in").addEventListener("change", () => {
  state.bargeIn = $("barge-in").checked;
  // Echo cancellation is what lets the microphone stay live; it is asked for when the microphone starts.
  if (state.mic && state.mic.setEchoCancellation) state.mic.setEchoCancellation(state.bargeIn);
  savePrefs();
});

// ---------------------------------------------------------------- speak panel

function textLimit() {
  const tts = state.config && state.config.settings && state.config.settings.tts;
  return tts ? tts.max_text_length : null;
}

function updateCount() {
  const length = $("speak-text").value.length;
  const limit = textLimit();
  const count = $("speak-count");
  count.textContent = limit ? `${length.toLocaleString()} / ${limit.toLocaleString()}` : `${length.toLocaleString()} characters`;
  count.classList.toggle("over", Boolean(limit && length > limit));
}

$("speak-text").addEventListener("input", updateCount);
$("speed").addEventListener("input", () => {
  $("speed-value").textContent = `${Number($("speed").value).toFixed(1)}×`;
});

function setSpeakState(text, isError = false) {
  const node = $("speak-state");
  node.textContent = text;
  node.classList.toggle("error-text", isError);
}

let speakController = null;
$("speak-form").addEventListener("submit", async (event) => {
  event.preventDefault();
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
  if (speakController) speakController.abort();
  speakController = new AbortController();
  const play = $("speak-play");
  play.disabled = true;
  setSpeakState($("speak-reply").checked ? "Asking the assistant…" : "Synthesizing…");
  try {
    const result = await speak({
      text,
      reply: $("speak-reply").checked,
      voice: $("voice").value,
      speed: Number($("speed").value),
      signal: speakController.signal,
    });
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
    const { title, detail } = explain(err, state.config && state.config.llm && state.config.llm.url);
    setSpeakState(`${title}: ${detail}`, true);
    addProblem(title, detail, { key: err.code === "llm_unavailable" ? "llm-down" : err.code || "speak" });
    if (err.code === "voice_not_found") loadVoices();
  } finally {
    play.disabled = false;
  }
});

// While the Speak player plays, the microphone is not fed either (whoever pressed play).
{
  const audio = $("speak-audio");
  let playing = false;
  audio.addEventListener("play", () => {
    if (playing) return;
    playing = true;
    state.assistantBusy += 1;
  });
  const release = () => {
    if (!playing) return;
    playing = false;
    state.assistantBusy = Math.max(0, state.assistantBusy - 1);
    if (state.assistantBusy === 0) idleState();
  };
  for (const type of ["pause", "ended", "error", "emptied"]) audio.addEventListener(type, release);
}

// ---------------------------------------------------------------- preferences kept in this browser

const PREFS_KEY = "voice-assistant.dashboard";

function loadPrefs() {
  try {
    return JSON.parse(localStorage.getItem(PREFS_KEY) || "{}");
  } catch {
    return {};
  }
}

function savePrefs() {
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify({ mode: state.mode, voice: $("voice").value, speed: $("speed").value, bargeIn: state.bargeIn }));
  } catch {
    // storage disabled: preferences simply are not kept
  }
}

function restorePrefs() {
  const prefs = loadPrefs();
  if (prefs.mode === "ptt" || prefs.mode === "handsfree") {
    state.mode = prefs.mode;
    $(prefs.mode === "ptt" ? "mode-ptt" : "mode-handsfree").checked = true;
  }
  if (typeof prefs.bargeIn === "boolean") {
    state.bargeIn = prefs.bargeIn;
    $("barge-in").checked = prefs.bargeIn;
  }
  if (prefs.speed) {
    $("speed").value = prefs.speed;
    $("speed-value").textContent = `${Number($("speed").value).toFixed(1)}×`;
  }
  return prefs;
}

for (const id of ["voice", "speed", "mode-ptt", "mode-handsfree"]) $(id).addEventListener("change", savePrefs);

async function loadVoices() {
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

// ---------------------------------------------------------------- status

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
  const previous = state.health[name];
  state.health[name] = ok;
  if (previous !== false && ok === false) addProblem(title, detail, { key: `${name}-down` });
}

async function refreshStatus() {
  const [stt, tts] = await Promise.allSettled([getJson("api/stt/health"), getJson("health")]);

  if (stt.status === "fulfilled") {
    const h = stt.value;
    const ok = h.status === "ok";
    setPill("pill-stt", ok ? "ok" : "warn", ok ? "healthy" : "degraded");
    renderService("svc-stt", ok ? "ok" : "warn", ok ? "healthy" : h.loading ? "loading the model" : "degraded", [
      ["Model", h.model],
      ["Device", h.device && h.compute_type ? `${h.device} · ${h.compute_type}` : h.device],
      ["Clients", h.max_connections ? `${h.connections} of ${h.max_connections}` : h.connections],
      ["Address", state.sttUrl],
    ], h.error);
    noteTransition("stt", ok, "Speech to text is degraded", h.error || "");
  } else {
    const err = stt.reason;
    const detail = err instanceof ApiError && err.code === "stt_unavailable" ? err.message : `The status check failed (${err.message}).`;
    setPill("pill-stt", "down", "not reachable");
    renderService("svc-stt", "down", "not reachable", [["Address", state.sttUrl]], detail);
    noteTransition("stt", false, "The speech-to-text service is not reachable", detail);
  }

  if (tts.status === "fulfilled") {
    const h = tts.value;
    const ok = h.status === "ok";
    const reasons = (h.reasons || []).join(" · ");
    setPill("pill-tts", ok ? "ok" : h.voice_loaded ? "warn" : "warn", ok ? "healthy" : "degraded");
    const llmUrl = state.config && state.config.llm && state.config.llm.url;
    setPill("pill-llm", h.ollama ? (h.llm_model_available === false ? "warn" : "ok") : "down", h.ollama ? (h.llm_model_available === false ? `model ${h.llm_model} missing` : "reachable") : "not reachable");
    renderService("svc-tts", ok ? "ok" : "warn", ok ? "healthy" : "degraded", [
      ["Engine", h.fallback ? `${h.engine} (fallback for ${h.configured_engine})` : h.engine],
      ["Voice", h.voice ? `${h.voice}${h.voice_loaded ? "" : " (not loaded yet)"}` : null],
      ["LLM", `${h.llm_model} · ${h.ollama ? "Ollama reachable" : "Ollama not reachable"}${llmUrl ? ` at ${llmUrl}` : ""}`],
      ["Workers", h.workers ? `${h.workers.running} busy, ${h.workers.waiting} waiting, ${h.workers.max_concurrent} max` : null],
      ["Replies", replyStream.open ? "streamed over /ws/tts (connected)" : "streamed over /ws/tts (not connected yet)"],
    ], reasons);
    state.health.tts = true;
    if (state.health.llm !== false && h.ollama === false) {
      addProblem(`Ollama is not running${llmUrl ? ` at ${llmUrl}` : ""}`, "Replies need it: start Ollama (ollama serve) or set llm.url. You can still have your words spoken.", { key: "llm-down" });
    }
    state.health.llm = h.ollama;
  } else {
    setPill("pill-tts", "down", "not reachable");
    setPill("pill-llm", "unknown", "unknown");
    renderService("svc-tts", "down", "not reachable", [], "The text-to-speech service (which serves this page) does not answer. Start it again (make run) and reload.");
    noteTransition("tts", false, "The text-to-speech service is not reachable", "Start it again (make run) and reload this page.");
  }
  $("status-updated").textContent = `updated ${clock()}`;
}

// ---------------------------------------------------------------- start

async function main() {
  restorePrefs();
  updateMicButton();
  await loadConfig();
  tts.connect().catch(() => {}); // opened now, so the first reply does not wait for it; reopened when it closes
  checkSecureContext();
  await Promise.allSettled([loadVoices(), refreshStatus()]);
  setInterval(refreshStatus, POLL_MS);
  document.body.dataset.ready = "true";
}

main();
