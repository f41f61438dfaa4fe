// The conversation's bubbles: the user's words and the assistant's answers, as list items of #conversation.
// Only the DOM lives here; conversation.js decides what goes in them, history.js fills in earlier turns.
import { $, el } from "./dom.js";

const EMPTY_TEXT = "Your words and the assistant's answers appear here.";

export function addBubble(role, text, meta = "") {
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

/** An answer that was cut off: it keeps only the words that began to play, as the service records it. */
export function markInterrupted(bubble, words, note) {
  bubble.dataset.state = "interrupted";
  bubble.classList.add("interrupted");
  bubble.querySelector(".words").textContent = words;
  bubble.querySelector(".meta").textContent = note;
}

/** Every bubble goes (a new conversation); the list says again what will appear in it. */
export function clearBubbles() {
  $("conversation").replaceChildren(el("li", { class: "empty", text: EMPTY_TEXT }));
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
