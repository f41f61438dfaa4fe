// Talk's microphone: a session is the microphone plus one /ws/stt socket. Hands-free it runs until
// Stop; push-to-talk it opens on the first press and each release asks for the transcript. With barge-in
// ("Let me interrupt") the microphone stays live while the assistant speaks, and speaking stops it.
// No session starts while the status poll says the STT service cannot take one.
import { player } from "./audio-out.js";
import { showPartial } from "./bubbles.js";
import { interrupt, transcribed } from "./conversation.js";
import { $ } from "./dom.js";
import { savePrefs } from "./prefs.js";
import { addProblem } from "./problems.js";
import { refreshStatus } from "./status.js";
import { assistant, config, onAssistantQuiet, onSttAvailability, prefs, speechToText, talk } from "./store.js";
import { idleState, setTalkState } from "./talk-state.js";
import { MicCapture, SttSocket, microphoneAvailable } from "./voice.js";

const LOUD_RMS = 0.01; // about -40 dBFS: above it a frame counts as "the microphone heard a voice"
const MAX_PENDING_FRAMES = 125; // 5 s of 40 ms frames kept while the socket connects
const STOP_GRACE_MS = 8000; // how long Stop waits for the last words before it closes the socket anyway

export function setupTalk() {
  const mic = $("mic");
  mic.addEventListener("click", () => {
    player.context(); // a click lets the page play the replies that follow
    if (prefs.mode !== "handsfree") return;
    if (talk.live || talk.connecting) stopSession();
    else startSession();
  });
  mic.addEventListener("pointerdown", (event) => {
    if (prefs.mode !== "ptt" || event.button !== 0) return;
    player.context();
    mic.setPointerCapture?.(event.pointerId);
    pressStart();
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) mic.addEventListener(type, pressEnd);
  mic.addEventListener("keydown", (event) => {
    if (prefs.mode !== "ptt" || (event.key !== " " && event.key !== "Enter")) return;
    event.preventDefault();
    player.context();
    if (!event.repeat) pressStart();
  });
  mic.addEventListener("keyup", (event) => {
    if (prefs.mode !== "ptt" || (event.key !== " " && event.key !== "Enter")) return;
    event.preventDefault();
    pressEnd();
  });
  mic.addEventListener("blur", pressEnd);
  mic.addEventListener("contextmenu", (event) => prefs.mode === "ptt" && event.preventDefault());
  $("mic-off").addEventListener("click", () => {
    endSession();
    mic.focus();
  });
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      prefs.mode = radio.value;
      talk.holding = false;
      if (talk.live && prefs.mode === "ptt" && talk.stt) talk.stt.sendJson({ type: "reset" });
      updateMicButton();
      idleState();
      savePrefs();
    });
  }
  $("barge-in").addEventListener("change", () => {
    prefs.bargeIn = $("barge-in").checked;
    // Echo cancellation is what lets the microphone stay live; it is asked for when the microphone starts.
    if (talk.mic && talk.mic.setEchoCancellation) talk.mic.setEchoCancellation(prefs.bargeIn);
    savePrefs();
  });
  onAssistantQuiet(idleState);
  onSttAvailability(() => {
    updateMicButton();
    // Only the idle line says why; a session, a reply or the secure-page notice keeps its own words.
    if (!talk.insecure && !talk.live && !talk.connecting && !talk.stopping && assistant.busy === 0) idleState();
  });
}

/** On an address that is not a secure context the browser gives no microphone: say why and how to fix it. */
export function checkSecureContext() {
  if (microphoneAvailable()) return;
  const served = config.served;
  $("secure-notice").hidden = false;
  $("secure-origin").textContent = location.origin;
  // The page's own port is the TTS service's (it serves this page); the config's may sit behind a proxy.
  const ttsPort = location.port || (served && served.tts && served.tts.port) || 8000;
  const sttPort = (served && served.stt && served.stt.port) || 8010;
  $("secure-local").href = `http://localhost:${ttsPort}/`;
  $("secure-local").textContent = `http://localhost:${ttsPort}/`;
  $("secure-ssh-open").textContent = `http://localhost:${ttsPort}`;
  $("secure-ssh").textContent = `ssh -L ${ttsPort}:localhost:${ttsPort} -L ${sttPort}:localhost:${sttPort} you@${location.hostname}`;
  talk.insecure = true;
  $("mic").disabled = true;
  $("mic-label").textContent = "Microphone unavailable";
  $("mic-hint").textContent = "This address is not a secure page, so the browser keeps the microphone off. See the note above.";
  setTalkState("blocked", "Microphone unavailable on this address");
}

export function updateMicButton() {
  const mic = $("mic");
  if (talk.insecure) return; // checkSecureContext disabled it for good, and said why
  // A new session needs the STT service; one already under way ends by itself if the service goes.
  const problem = talk.live || talk.connecting ? null : speechToText.problem;
  mic.disabled = Boolean(problem);
  if (problem) mic.title = [problem, speechToText.detail].filter(Boolean).join(": ");
  else mic.removeAttribute("title");
  const ptt = prefs.mode === "ptt";
  const active = ptt ? talk.holding : talk.live || talk.connecting;
  mic.setAttribute("aria-pressed", String(active));
  mic.classList.toggle("active", active);
  $("mic-label").textContent = ptt ? (talk.holding ? "Listening… release to send" : "Hold to talk") : talk.live || talk.connecting ? "Stop" : "Start talking";
  // The hint describes the button to screen readers too: while it is off, it says why and until when.
  $("mic-hint").textContent = problem
    ? [speechToText.detail, "Start talking comes back once speech to text is healthy."].filter(Boolean).join(" ")
    : ptt
      ? "Hold the button (or Space while it has focus) while you speak; release to send."
      : "Press to start. The assistant listens until you press again and answers each time you pause.";
  $("mic-off").hidden = !(ptt && talk.live);
}

function feeding() {
  if (talk.stopping) return false;
  // Without barge-in, the microphone is not fed while the assistant thinks or speaks (no self-listening);
  // with it, echo cancellation keeps the assistant's voice out and the user can cut it off.
  if (!prefs.bargeIn && assistant.busy > 0) return false;
  return prefs.mode === "handsfree" || talk.holding;
}

function onFrame(buffer, rms) {
  $("level-bar").style.transform = `scaleX(${Math.min(1, Math.sqrt(rms) * 2.2).toFixed(3)})`;
  if (!feeding()) return;
  if (!talk.stt || !talk.stt.open) {
    if (talk.connecting) {
      talk.pending.push([buffer, rms]);
      if (talk.pending.length > MAX_PENDING_FRAMES) talk.pending.shift();
    }
    return;
  }
  send(buffer, rms);
}

function send(buffer, rms) {
  talk.stt.sendAudio(buffer);
  talk.samplesSent += buffer.byteLength / 2;
  if (rms > LOUD_RMS) talk.lastLoudAt = performance.now();
  renderAudioStats();
}

function renderAudioStats() {
  const rate = (talk.stt && talk.stt.ready && talk.stt.ready.sample_rate) || 16000;
  const seconds = talk.samplesSent / rate;
  const input = talk.mic && talk.mic.inputRate ? ` (microphone at ${(talk.mic.inputRate / 1000).toFixed(1)} kHz)` : "";
  $("audio-stats").textContent = `Audio sent this session: ${seconds.toFixed(1)} s as ${rate / 1000} kHz PCM16${input}.`;
  $("audio-stats").dataset.samples = String(talk.samplesSent);
}

/** A final transcript: its latency is measured from the end of speech, then the conversation takes it. */
function onTranscript(message) {
  showPartial("");
  const now = performance.now();
  const speechEnd = message.reason === "end" && talk.releasedAt ? talk.releasedAt : talk.lastLoudAt;
  const sttLatency = speechEnd ? Math.max(0, now - speechEnd) : null;
  finishStopping();
  transcribed(message, { sttLatency, stt: message.timings || null, heardAt: now });
}

async function startSession() {
  if (talk.live || talk.connecting) return;
  talk.connecting = true;
  talk.pending = [];
  talk.samplesSent = 0;
  updateMicButton();
  setTalkState("connecting", "Starting the microphone…");
  const targetRate = (config.served && config.served.stt && config.served.stt.sample_rate) || 16000;
  const mic = new MicCapture({ targetRate, onFrame, echoCancellation: prefs.bargeIn });
  try {
    await mic.start();
  } catch (err) {
    talk.connecting = false;
    talk.holding = false;
    addProblem(err.title || "The microphone could not be started", err.detail || String(err), { key: "mic" });
    setTalkState("error", err.title || "Microphone error");
    updateMicButton();
    return;
  }
  talk.mic = mic;
  setTalkState("connecting", "Connecting to the speech-to-text service…");
  const stt = new SttSocket(config.sttUrl, {
    onTranscript,
    onPartial: (m) => showPartial(m.text || ""),
    onSpeechStarted: () => {
      if (prefs.bargeIn) interrupt(); // the user started speaking: the assistant stops talking at once
    },
    onNoSpeech: () => {
      showPartial("");
      finishStopping();
      if (prefs.mode === "ptt") setTalkState("ready", "No speech heard: hold the button while you speak");
    },
    onBufferLimit: (m) => addProblem("Too much audio is waiting to be transcribed", `The service holds at most ${m.limit} s; audio beyond it was dropped. Pause for a moment.`, { key: "buffer" }),
    onServerError: (m) => {
      if (m.code === "too_many_connections" || m.code === "model_unavailable") return; // the close that follows reports it
      addProblem("The speech-to-text service refused something", `${m.message} (${m.code})`, { key: `stt-${m.code}` });
    },
    onClosed: (err) => {
      if (talk.stt !== stt) return; // an older session closing late
      endSession();
      if (err) {
        addProblem(err.title, err.detail, { key: `stt-closed-${err.code}` });
        setTalkState("error", `${err.title}. ${err.detail}`);
      }
    },
  });
  talk.stt = stt;
  try {
    await stt.connect();
  } catch (err) {
    mic.stop();
    talk.mic = null;
    talk.stt = null;
    talk.connecting = false;
    talk.holding = false;
    addProblem(err.title || "Could not connect", err.detail || String(err), { key: err.code === "unreachable" ? "stt-down" : `stt-connect-${err.code}` });
    setTalkState("error", err.title || "Could not connect");
    updateMicButton();
    refreshStatus();
    return;
  }
  talk.connecting = false;
  talk.live = true;
  for (const [buffer, rms] of talk.pending) send(buffer, rms);
  talk.pending = [];
  if (talk.endWhenReady) {
    talk.endWhenReady = false;
    talk.releasedAt = performance.now();
    stt.sendJson({ type: "end" });
  }
  idleState();
  updateMicButton();
  renderAudioStats();
}

function endSession() {
  if (talk.mic) talk.mic.stop();
  if (talk.stt) talk.stt.close();
  if (talk.stopping) clearTimeout(talk.stopping);
  talk.mic = talk.stt = talk.stopping = null;
  talk.live = talk.connecting = talk.holding = false;
  $("level-bar").style.transform = "scaleX(0)";
  updateMicButton();
  idleState();
}

function stopSession() {
  if (!talk.live) {
    if (!talk.connecting) endSession();
    return;
  }
  // Stop the microphone, but let the words spoken so far come back before the socket closes.
  if (talk.mic) talk.mic.stop();
  talk.mic = null;
  talk.live = false;
  talk.holding = false;
  talk.releasedAt = performance.now();
  talk.stt.sendJson({ type: "end" });
  talk.stopping = setTimeout(endSession, STOP_GRACE_MS);
  $("level-bar").style.transform = "scaleX(0)";
  updateMicButton();
  setTalkState("thinking", "Finishing…");
}

/** Stop was pressed and the last words are back (or there were none): the session can end now. */
function finishStopping() {
  if (talk.stopping) endSession();
}

function pressStart() {
  if (prefs.mode !== "ptt" || talk.holding) return;
  talk.holding = true;
  talk.lastLoudAt = null;
  updateMicButton();
  if (!talk.live) startSession();
  else idleState();
}

function pressEnd() {
  if (prefs.mode !== "ptt" || !talk.holding) return;
  talk.holding = false;
  updateMicButton();
  if (talk.stt && talk.stt.open) {
    talk.releasedAt = performance.now();
    talk.stt.sendJson({ type: "end" });
    setTalkState("thinking", "Transcribing…");
  } else if (talk.connecting) {
    talk.endWhenReady = true;
  }
}
