// The dashboard's state, in one place: one small object per concern, written by the module named
// beside it and read by the others. Two facts matter beyond the module that changes them, the assistant
// falling quiet and the STT service coming and going: they change only through the setters at the end,
// which tell Talk, so no panel has to call into another to keep the microphone right.

/** Settings (settings.js): /api/config's answer (null when it could not be read) and where /ws/stt is. */
export const config = { served: null, sttUrl: null };

/** Talk's choices (talk.js; prefs.js restores them): hands-free or push-to-talk, and "Let me interrupt". */
export const prefs = { mode: "handsfree", bargeIn: true };

/** The microphone session (talk.js). */
export const talk = {
  insecure: false, // not a secure context: the browser gives this page no microphone at all
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

/** The conversation (conversation.js; its id: history.js). */
export const conversation = {
  id: null, // the service's conversation id this tab's replies continue; null: the next reply starts one
  epoch: 0, // counts New conversation presses: a turn still queued from before one is not answered
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

/** The Speak form (speak.js): the AbortController of the request in flight, and whether its player sounds. */
export const speak = { request: null, playing: false };

function signal() {
  const listeners = [];
  return {
    listen: (listener) => {
      listeners.push(listener);
    },
    notify: () => listeners.forEach((listener) => listener()),
  };
}

/**
 * How many things the assistant is preparing or saying (conversation.js: a reply, "Speak it instead";
 * speak.js: the Speak player). Without barge-in the microphone is not fed while it is above zero.
 */
export const assistant = { busy: 0 };
const quiet = signal();

export function assistantStarts() {
  assistant.busy += 1;
}

export function assistantStops() {
  assistant.busy = Math.max(0, assistant.busy - 1);
  if (assistant.busy === 0) quiet.notify();
}

/** `listener` runs each time the assistant has nothing left to prepare or say. */
export const onAssistantQuiet = quiet.listen;

/** Why the STT service cannot take a new session (status.js: a headline and its details); problem is null while it can. */
export const speechToText = { problem: null, detail: "" };
const sttChange = signal();

/** Set by the status poll; the listeners hear only changes (another reason, or the service back). */
export function setSttProblem(problem, detail = "") {
  if (problem === speechToText.problem && detail === speechToText.detail) return;
  speechToText.problem = problem;
  speechToText.detail = detail;
  sttChange.notify();
}

export const onSttAvailability = sttChange.listen;
