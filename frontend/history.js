// Which conversation this tab is in, across reloads: its id is kept in sessionStorage (one per tab, gone
// with the tab), sent with every reply's text_input, and after a reload its earlier turns are read back
// from GET /v1/conversations/{id}. A conversation the service has forgotten is left silently: the next
// reply starts a new one.
import { getJson } from "./api.js";
import { addBubble, markInterrupted } from "./bubbles.js";
import { addProblem } from "./problems.js";
import { conversation } from "./store.js";

const STORAGE_KEY = "voice-assistant.conversation";
const EARLIER = "earlier in this conversation";

/** The service named the conversation a reply belongs to (generation_started): this tab stays in it. */
export function keepConversation(id) {
  conversation.id = id;
  try {
    sessionStorage.setItem(STORAGE_KEY, id);
  } catch {
    // storage disabled: the conversation lasts as long as the page
  }
}

/** The next reply starts a new conversation (New conversation, or the service forgot this one). */
export function forgetConversation() {
  conversation.id = null;
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // storage disabled: nothing was kept
  }
}

/** After a reload: the bubbles of the turns the service remembers of this tab's conversation. */
export async function restoreConversation() {
  let id = null;
  try {
    id = sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return;
  }
  if (!id) return;
  conversation.id = id;
  const epoch = conversation.epoch;
  let remembered;
  try {
    remembered = await getJson(`v1/conversations/${encodeURIComponent(id)}`);
    if (epoch !== conversation.epoch) return; // New conversation was pressed meanwhile
  } catch (err) {
    if (err.status === 404) forgetConversation();
    // Not reachable now: the id is kept, so the next reply still continues the conversation.
    else addProblem("The earlier turns could not be shown", `${err.message}. The assistant still remembers them.`, { key: "conversation-restore" });
    return;
  }
  for (const turn of remembered.turns) {
    addBubble("user", turn.user, EARLIER);
    const answer = addBubble("assistant", turn.assistant, EARLIER);
    if (turn.interrupted) markInterrupted(answer, turn.assistant, `${EARLIER} · interrupted`);
    else answer.dataset.state = "played";
  }
}
