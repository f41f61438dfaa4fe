// The assistant's voice in this page, one of each for all panels: the /ws/tts socket replies stream
// over, and the Web Audio player that plays them as they come.
import { StreamPlayer } from "./player.js";
import { addProblem } from "./problems.js";
import { TtsSocket } from "./tts-socket.js";

export const player = new StreamPlayer();
export const replyStream = new TtsSocket({
  // onConnection is the Status panel's (setupStatus): it shows whether this socket is connected.
  onProblem: (code, message) => addProblem("The text-to-speech service refused something", `${message} (${code})`, { key: `tts-${code}` }),
});
