// The conversation: the user's words and the assistant's answers as bubbles. Each answer is asked for
// over /ws/tts and streams into its bubble, words and audio, as it is generated. Barge-in, Stop and New
// conversation cut it off; the service is told how much was heard, and both keep only those words.
import { ApiError, explain, isLlmError } from "./api.js";
import { player, replyStream } from "./audio-out.js";
import { addBubble, clearBubbles, markInterrupted } from "./bubbles.js";
import { $, el } from "./dom.js";
import { forgetConversation, keepConversation, restoreConversation } from "./history.js";
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
  $("reply-stop").addEventListener("click", () => cutReply("interrupted: you pressed Stop"));
  $("new-conversation").addEventListener("click", newConversation);
}

/** After a reload, the earlier turns of this tab's conversation; a turn asked for meanwhile waits for them. */
export function restoreEarlierTurns() {
  conversation.turnChain = conversation.turnChain.then(restoreConversation);
  return conversation.turnChain;
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

/** Barge-in: the user started speaking, so the reply stops now and the microphone listens. */
export function interrupt() {
  if (!cutReply("interrupted: you started speaking")) return;
  conversation.bargeIns += 1;
  $("talk").dataset.bargeIns = String(conversation.bargeIns);
  setTalkState("listening", "Listening… (you interrupted)");
}

/**
 * Stop the reply now: playback stops, the service is told how much of it played (it stops the
 * generation, or trims the reply it recorded if that had already completed), later audio is discarded,
 * and the bubble keeps the words that began to play. Returns false when no reply was under way.
 */
function cutReply(note) {
  const current = conversation.current;
  if (!current || current.interrupted) return false;
  current.interrupted = true;
  const heard = current.playback.stop();
  replyStream.cancel(current.generation, heard.seconds * 1000);
  markInterrupted(current.bubble, heard.texts.filter(Boolean).join(" "), note);
  if (current.turn) {
    current.turn.interrupted = true;
    recordTurn(current.turn);
  }
  return true;
}

/** New conversation: the reply stops, the bubbles go, and the next turn is answered without history. */
function newConversation() {
  conversation.epoch += 1;
  cutReply("interrupted: a new conversation began"); // what was heard of it stays in the old conversation
  clearBubbles();
  forgetConversation();
  // The socket's next replies start a new conversation; a socket opened later starts one anyway.
  replyStream.send("new_conversation");
  $("type-text").focus();
}

function takeTurn(text, timing) {
  assistantStarts();
  const epoch = conversation.epoch;
  conversation.turnChain = conversation.turnChain
    .then(() => epoch === conversation.epoch && answer(text, timing))
    .catch((err) => addProblem("Something went wrong", String(err)))
    .finally(assistantStops);
}

async function answer(text, timing) {
  const turn = { number: ++conversation.turnCount, sttLatency: timing.sttLatency, stt: timing.stt || null, server: null, firstAudio: null, interrupted: false };
  setTalkState("thinking", "Thinking…");
  const bubble = addBubble("assistant", "…", "thinking");
  bubble.dataset.state = "pending";
  recordTurn(turn);
  try {
    await replyInConversation(bubble, text, timing, turn);
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

/** The reply continues this tab's conversation; one the service has forgotten (idle too long, deleted,
 * a restart) is not an error to show: the reply starts a new conversation instead. */
async function replyInConversation(bubble, text, timing, turn) {
  const asked = conversation.id;
  try {
    await streamReply(bubble, { text, reply: true, conversationId: asked }, timing, turn);
  } catch (err) {
    if (!(asked && err instanceof ApiError && err.code === "conversation_not_found")) throw err;
    forgetConversation();
    await streamReply(bubble, { text, reply: true, conversationId: null }, timing, turn);
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
async function streamReply(bubble, { text, reply, conversationId }, timing, turn, label = "") {
  const words = bubble.querySelector(".words");
  const playback = player.begin(turn ? `turn-${turn.number}` : label || "reply");
  let blockedNoted = false;
  // The Speak panel's voice and speed are the ones replies use too.
  const generation = replyStream.generate(
    { text, reply, conversationId, voice: $("voice").value, speed: Number($("speed").value) },
    {
      onStarted: (started) => {
        if (started.conversation_id) keepConversation(started.conversation_id);
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
  setCurrent(current);
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
      showComplete(bubble, result, turn, label);
      playback.finish();
    }
    const outcome = await playback.ended;
    bubble.dataset.state = current.interrupted ? "interrupted" : outcome === "ended" ? "played" : "stopped";
  } catch (err) {
    playback.stop();
    throw err;
  } finally {
    if (conversation.current === current) setCurrent(null);
  }
}

/** The reply under way (Stop is offered while there is one), or null. */
function setCurrent(current) {
  conversation.current = current;
  $("reply-stop").hidden = current === null;
}

/** generation_complete: the reply's final words, its voice and length, and the service's timings. */
function showComplete(bubble, result, turn, label) {
  if (result.text) bubble.querySelector(".words").textContent = result.text;
  const seconds = Number.isFinite(result.audio_seconds) ? `${result.audio_seconds.toFixed(1)} s` : "";
  bubble.querySelector(".meta").textContent = [label, result.voice, seconds].filter(Boolean).join(" · ");
  if (turn) {
    turn.server = result.timings || null;
    recordTurn(turn);
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
