// The dashboard's state, in one place: one small object per concern. The panel module named beside
// each object writes it; the others only read it. The one fact that several panels change and another
// one reacts to, the assistant falling quiet, comes with a notification instead of cross-module calls.

/** Settings (settings.js): /api/config's answer (null when it could not be read) and where /ws/stt is. */
export const config = { served: null, sttUrl: null };

/** Talk's choices (talk.js; prefs.js restores them): hands-free or push-to-talk, and "Let me interrupt". */
export const prefs = { mode: "handsfree", bargeIn: true };

/** The microphone session (talk.js). */
export const talk = {
  mic: null, // the MicCapture while the microphone is on
  stt: null, // the SttSocket of this session
  connecting: false,
  live: false,
  holding: false, // push-to-talk: the button is held down
  endWhenReady: false, // push-to-talk released before the socket opened: send "end" once it has
  stopping: null, // the timer that closes the socket if the last words never come back
  pending: [], // frames heard while the socket connects, sent once it is open
  samplesSent: 0,
  lastLoudAt: null, // when a frame was last loud enough to be a voice: the end of speech, hands-free
  releasedAt: null, // when the user asked to finish: the end of speech, push-to-talk and Stop
};

/** The conversation (conversation.js). */
export const conversation = {
  current: null, // the reply being generated or played: {generation, playback, bubble, turn, interrupted}
  bargeIns: 0,
  turnChain: Promise.resolve(), // turns are answered one after another, in the order they were heard
  turnCount: 0,
};

/** The latency table (timings.js): the newest turns first. */
export const timings = { turns: [] };

/** Recent problems (problems.js): the entry shown for each key, so a repeat updates it instead. */
export const problems = { entries: new Map() };

/** Service health as last seen (status.js): a problem is reported when a service goes from up to down. */
export const health = { stt: null, tts: null, llm: null };

/** The Speak form (speak.js). */
export const speak = { request: null, playing: false }; // the AbortController of the request in flight; the player sounding

/**
 * How many things the assistant is preparing or saying (a reply in Talk, "Speak it instead", the Speak
 * player). Without barge-in the microphone is not fed while it is above zero.
 */
export const assistant = { busy: 0 };
const quietListeners = [];

export function assistantStarts() {
  assistant.busy += 1;
}

export function assistantStops() {
  assistant.busy = Math.max(0, assistant.busy - 1);
  if (assistant.busy === 0) for (const listener of quietListeners) listener();
}

/** `listener` runs each time the assistant has nothing left to prepare or say. */
export function onAssistantQuiet(listener) {
  quietListeners.push(listener);
}
