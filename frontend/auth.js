// The API key, when the services ask for one (auth.keys): asked for once, kept for this tab's session
// (sessionStorage, gone when the tab closes), sent as a Bearer header on fetches and as the subprotocol
// "bearer.KEY" on WebSockets (browsers cannot set headers on a WebSocket).
import { el } from "./dom.js";

const STORAGE_KEY = "voice-assistant.api-key";
const PLAIN_PROTOCOL = "voice-assistant";
// A subprotocol is an HTTP token: a key with other characters cannot travel in one.
const TOKEN = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

export function apiKey() {
  return sessionStorage.getItem(STORAGE_KEY);
}

/** `headers` with the key's Authorization header, when there is a key. */
export function withKey(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

/** The subprotocols a WebSocket offers: the plain one the server accepts, and the key. */
export function socketProtocols() {
  const key = apiKey();
  return key ? [PLAIN_PROTOCOL, `bearer.${key}`] : undefined;
}

/** Whether the services ask for a key, and whether the one kept (if any) opens them. */
async function check(key) {
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const response = await fetch("v1/auth/ticket", { method: "POST", headers, cache: "no-store" });
  if (response.status === 401) return { needed: true, accepted: false };
  return { needed: response.ok ? (await response.json()).auth : Boolean(key), accepted: response.ok };
}

function askForKey(problem) {
  return new Promise((resolve) => {
    const input = el("input", { type: "password", id: "api-key-input", autocomplete: "off", required: true, "aria-describedby": "api-key-help" });
    const form = el(
      "form",
      { method: "dialog", class: "key-form" },
      el("h2", { id: "api-key-title", text: "This assistant needs an API key" }),
      el("p", { id: "api-key-help", text: "Ask whoever runs it for a key. It is kept for this tab only, until you close it." }),
      problem ? el("p", { class: "key-problem", role: "alert", text: problem }) : null,
      el("label", { for: "api-key-input", text: "API key" }),
      input,
      el("button", { type: "submit", class: "primary", text: "Use this key" }),
    );
    const dialog = el("dialog", { id: "api-key-dialog", "aria-labelledby": "api-key-title" }, form);
    document.body.append(dialog);
    form.addEventListener("submit", () => {
      dialog.remove();
      resolve(input.value.trim());
    });
    dialog.addEventListener("cancel", (event) => event.preventDefault()); // nothing works without one
    dialog.showModal();
    input.focus();
  });
}

/** Before anything else talks to the services: a key that opens them, asked for until one does. */
export async function ensureAccess() {
  let problem = null;
  for (;;) {
    const key = apiKey();
    let answer;
    try {
      answer = await check(key);
    } catch {
      return; // not reachable: the status panel says so, and the page retries on its own
    }
    if (!answer.needed || answer.accepted) {
      if (!answer.needed) sessionStorage.removeItem(STORAGE_KEY);
      if (!key || TOKEN.test(key)) return;
      problem = "This key has characters a browser cannot send on a WebSocket; use a key of letters, digits, '-', '_' and '.'.";
    } else if (key) {
      problem = "That key was not accepted. Check it and try again.";
    }
    sessionStorage.removeItem(STORAGE_KEY);
    const entered = await askForKey(problem);
    if (entered) sessionStorage.setItem(STORAGE_KEY, entered);
  }
}
