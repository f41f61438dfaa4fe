// The Talk panel's status line: what the microphone and the assistant are doing now. Its data-state
// is also set on the Talk card, which the stylesheet and the tests read.
import { $ } from "./dom.js";
import { prefs, speechToText, talk } from "./store.js";

export function setTalkState(name, text) {
  const node = $("talk-state");
  node.dataset.state = name;
  node.textContent = text;
  $("talk").dataset.state = name;
}

/** The line for when the assistant is quiet: whether, and how, the microphone listens (or why it cannot). */
export function idleState() {
  if (talk.live) {
    if (prefs.mode === "ptt") setTalkState("ready", talk.holding ? "Listening…" : "Ready: hold the button while you speak");
    else setTalkState("listening", "Listening…");
  } else if (speechToText.problem) setTalkState("unavailable", speechToText.problem);
  else setTalkState("off", "Microphone off");
}
