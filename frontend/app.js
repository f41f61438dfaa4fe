// The dashboard: Talk (microphone -> STT -> streamed reply -> speech, with barge-in), Speak, Voices, Status,
// problems, Settings. This module only wires the panels together and starts them, in an order that
// matters: preferences before the first render, /api/config before anything that reads it.
import { player, replyStream } from "./audio-out.js";
import { restoreEarlierTurns, setupConversation } from "./conversation.js";
import { ensureAccess } from "./auth.js";
import { restorePrefs } from "./prefs.js";
import { setupProblems } from "./problems.js";
import { loadConfig } from "./settings.js";
import { setupDocuments } from "./documents.js";
import { applyLimits, loadVoices, setupSpeak } from "./speak.js";
import { pollStatus, refreshStatus, setupStatus } from "./status.js";
import * as store from "./store.js";
import { checkSecureContext, setupTalk, updateMicButton } from "./talk.js";
import { loadVoiceTable, setupVoices } from "./voices.js";

// For the browser's console (and the tests): what plays, what the reply stream did, the state.
window.dashboard = { player, tts: replyStream, state: store };

async function main() {
  setupProblems();
  setupTalk();
  setupConversation();
  setupSpeak();
  setupVoices();
  setupDocuments();
  setupStatus();
  restorePrefs();
  updateMicButton();
  await ensureAccess();
  await loadConfig();
  applyLimits();
  replyStream.connect().catch(() => {}); // opened now, so the first reply does not wait for it; reopened when it closes
  checkSecureContext();
  await Promise.allSettled([loadVoices(), loadVoiceTable(), refreshStatus(), restoreEarlierTurns()]);
  pollStatus();
  document.body.dataset.ready = "true";
}

main();
