// The conversation: the user's words and the assistant's answers as bubbles. Each answer is asked for
// over /ws/tts and streams into its bubble, words and audio, as it is generated; barge-in cuts it off.
import { explain, isLlmError } from "./api.js";
import { player, replyStream } from "./audio-out.js";
import { $, el } from "./dom.js";
import { addProblem } from "./problems.js";
import { llmServer } from "./settings.js";
import { assistantStarts, assistantStops, conversation, prefs, talk } from "./store.js";
import { idleState, setTalkState } from "./talk-state.js";
import { recordTurn } from "./timings.js";

export function setupConversation() {
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
}

/** Words heard so far in the current utterance, in a faint bubble that the final transcript replaces.
 * Hidden from screen readers: the conversation is a live region, and partials would chatter. */
export function showPartial(text) {
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

/** A final transcript from the microphone: the user's bubble, then (if there were words) the answer. */
export function transcribed(message, timing) {
  const text = (message.text || "").trim();
  const bubble = addBubble("user", text || "(nothing recognisable)", `${message.duration.toFixed(1)} s of audio · ${message.reason}`);
  bubble.dataset.duration = String(message.duration);
  if (!text) {
    if (!conversation.current) idleState();
    return;
  }
  takeTurn(text, timing);
}

/** Stop the reply now: playback stops, the generation is cancelled, later audio of it is discarded. */
export function interrupt() {
  const current = conversation.current;
  if (!current || current.interrupted) return;
  current.interrupted = true;
  current.playback.stop();
  const cancelSent = replyStream.cancel(current.generation);
  conversation.bargeIns += 1;
  $("talk").dataset.bargeIns = String(conversation.bargeIns);
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

function addBubble(role, text, meta = "") {
  const bubble = el(
    "li",
    { class: `turn ${role}`, "data-role": role },
    el("span", { class: "who", text: role === "user" ? "You" : "Assistant" }),
    el("p", { class: "words", text }),
    el("span", { class: "meta muted small", text: meta }),
  );
  const list = $("conversation");
  const empty = list.querySelector(".empty");
  if (empty) empty.remove();
  list.append(bubble);
  bubble.scrollIntoView({ block: "nearest" });
  return bubble;
}

function takeTurn(text, timing) {
  assistantStarts();
  const turn = { number: ++conversation.turnCount, sttLatency: timing.sttLatency, stt: timing.stt || null, server: null, firstAudio: null, interrupted: false };
  conversation.turnChain = conversation.turnChain
    .then(() => answer(text, timing, turn))
    .catch((err) => addProblem("Something went wrong", String(err)))
    .finally(assistantStops);
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
      const { title, detail } = explain(err, llmServer());
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
  assistantStarts();
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
    assistantStops();
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
  // The Speak panel's voice and speed are the ones replies use too.
  const generation = replyStream.generate(
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
  conversation.current = current;
  playback.onPlaying = () => {
    if (current.interrupted) return;
    bubble.dataset.state = "playing";
    if (timing && turn) {
      turn.firstAudio = playback.startedAt - timing.heardAt;
      recordTurn(turn);
    }
    setTalkState("speaking", prefs.bargeIn && talk.live ? "Speaking… (start talking to interrupt)" : "Speaking…");
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
    if (conversation.current === current) conversation.current = null;
  }
}

/** The browser keeps the AudioContext suspended until a click on this page: offer one. */
function noteBlockedPlayback(bubble) {
  const play = el("button", { type: "button", class: "secondary small-button", text: "Play the answer" });
  play.addEventListener("click", () => {
    player.context();
    play.parentElement.remove();
  });
  bubble.append(el("div", { class: "turn-actions" }, play));
  addProblem("The browser blocked playback", 'It plays sound only after a click on this page. Press "Play the answer".', { key: "autoplay" });
}
