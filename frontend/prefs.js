// Preferences kept in this browser: the Talk mode, "Let me interrupt", and the Speak voice and speed.
import { $ } from "./dom.js";
import { prefs } from "./store.js";

const PREFS_KEY = "voice-assistant.dashboard";

export function loadPrefs() {
  try {
    return JSON.parse(localStorage.getItem(PREFS_KEY) || "{}");
  } catch {
    return {};
  }
}

export function savePrefs() {
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify({ mode: prefs.mode, voice: $("voice").value, speed: $("speed").value, bargeIn: prefs.bargeIn }));
  } catch {
    // storage disabled: preferences simply are not kept
  }
}

/** Puts the saved choices into the store and the controls (the voice waits for the list: see loadVoices). */
export function restorePrefs() {
  const saved = loadPrefs();
  if (saved.mode === "ptt" || saved.mode === "handsfree") {
    prefs.mode = saved.mode;
    $(saved.mode === "ptt" ? "mode-ptt" : "mode-handsfree").checked = true;
  }
  if (typeof saved.bargeIn === "boolean") {
    prefs.bargeIn = saved.bargeIn;
    $("barge-in").checked = saved.bargeIn;
  }
  if (saved.speed) {
    $("speed").value = saved.speed;
    $("speed-value").textContent = `${Number($("speed").value).toFixed(1)}×`;
  }
}
