"""In-process speech from libespeak-ng through ctypes.

The `espeakng-loader` wheel ships `libespeak-ng.so` together with the full espeak-ng data, so this
engine speaks with no download, no apt package and no subprocess. It is also the one way to make
real (intelligible, VAD-detectable) speech for the speech-to-text tests.

Only two of the loader's helpers are used: `get_library_path()` and `get_data_path()`.
Its `load_library()` prints to stdout on failure and `make_library_available()` rewrites
`LD_LIBRARY_PATH`, so we load the library ourselves.

Output is not bit-for-bit repeatable: espeak-ng adds pitch "flutter" from a table whose position is
a function-static in the library that nothing resets, so the same text comes out a few samples
(well under 1 ms) longer or shorter depending on what was spoken before. Compare lengths with a
tolerance, never exactly.

Calls block for the length of the synthesis (a sentence takes milliseconds); callers run them in a
worker thread.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger(__name__)

# Constants from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# Without this flag espeak-ng calls exit() when its data cannot be loaded, killing the service.
_INITIALIZE_DONT_EXIT = 0x8000
_EE_OK = 0
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
# The synth callback's return value: 0 carries on, 1 aborts the synthesis.
_CONTINUE = 0

_MIN_RATE_WPM = 80  # espeak-ng clamps rates outside 80..450 (up to 1000 with its "sonic" speed-up)
_MAX_RATE_WPM = 450


class EspeakError(Exception):
    """libespeak-ng could not be loaded or refused a request (unknown voice, bad parameter)."""


@dataclass(frozen=True)
class EspeakAudio:
    """One synthesized utterance."""

    samples: np.ndarray
    """Mono float32 samples in [-1, 1]."""

    sample_rate: int
    """Samples per second (22050 for espeak-ng)."""


class _EspeakEvent(ctypes.Structure):
    """`espeak_EVENT`; only its layout matters: the callback keeps the audio, not the events."""

    class _Id(ctypes.Union):
        _fields_ = [
            ("number", ctypes.c_int),
            ("name", ctypes.c_char_p),
            ("string", ctypes.c_char * 8),
        ]

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _Id),
    ]


class _EspeakVoice(ctypes.Structure):
    """`espeak_VOICE`, as returned by `espeak_ListVoices`."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        # Not a plain C string: (priority byte, NUL-terminated language) pairs, then a 0 byte.
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)

# libespeak-ng keeps all its state in globals (current voice, parameters, the one synth callback,
# its text and sound buffers) and is not reentrant: two threads synthesizing at once would mix
# their audio or corrupt the library (tried: four threads without it abort the process with
# "corrupted size vs. prev_size"). Every call into it, initialisation included, holds this lock.
_LOCK = threading.Lock()


class _Library:
    """The loaded and initialised library; created once per process under `_LOCK`."""

    def __init__(self) -> None:
        import espeakng_loader

        lib_path = espeakng_loader.get_library_path()
        data_path = espeakng_loader.get_data_path()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as error:
            raise EspeakError(f"cannot load libespeak-ng from {lib_path}: {error}") from error

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_EspeakVoice)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))

        # buflength 0 = the library's default (200 ms per callback). The path may be the data
        # directory itself or its parent; the loader gives the directory itself.
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if sample_rate <= 0:
            raise EspeakError(f"espeak_Initialize failed ({sample_rate}) with data at {data_path}")

        self.lib = lib
        self.sample_rate = sample_rate
        # The chunks of the synthesis in progress; only touched while `_LOCK` is held.
        self.chunks: list[np.ndarray] = []
        # ctypes does not keep the C function pointer alive: if this object were collected, the
        # library would call freed memory. Holding it on the process-wide singleton prevents that.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self.voice_names = self._voice_names()
        self.folded_names = frozenset(name.casefold() for name in self.voice_names)
        self.variants = self._variant_names()
        log.debug(
            "espeak_initialized",
            library=lib_path,
            sample_rate=sample_rate,
            voices=len(self.voice_names),
        )

    def _on_audio(self, wav: Any, num_samples: int, _events: Any) -> int:
        # espeak-ng calls this once per buffer and a last time with wav=NULL and 0 samples when
        # the message ends; a buffer can also carry only events (num_samples 0).
        if wav and num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return _CONTINUE

    def select_voice(self, voice: str) -> None:
        """Make `voice` current, the way the espeak-ng command line resolves `-v`."""
        # Checked against the listing first because espeak-ng's own lookups are lenient: a
        # language search for "no-such-voice" happily picks Norwegian ("no"), and an unknown
        # "+variant" is silently ignored.
        base, _, variant = voice.partition("+")
        if base.casefold() not in self.folded_names or (variant and variant not in self.variants):
            raise EspeakError(f"unknown espeak-ng voice: {voice!r}")
        if self.lib.espeak_SetVoiceByName(voice.encode()) == _EE_OK:
            return
        # SetVoiceByName only knows voice files and voice names; many language codes that
        # espeak_ListVoices reports ("en-gb", "zh", "no", "pt-pt") are aliases inside a voice file
        # and are found only by a language search.
        spec = _EspeakVoice()
        language = ctypes.create_string_buffer(voice.encode())
        spec.languages = ctypes.cast(language, ctypes.c_void_p)
        if self.lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) != _EE_OK:
            raise EspeakError(f"espeak-ng could not load voice {voice!r}")

    def _list_voices(self, languages: bytes | None) -> list[_EspeakVoice]:
        """`espeak_ListVoices`: every voice, or those for one language ("variant" gives the
        variants). The structs belong to the library, which keeps them until the next call."""
        spec = None
        if languages is not None:
            spec_struct = _EspeakVoice()
            language = ctypes.create_string_buffer(languages)
            spec_struct.languages = ctypes.cast(language, ctypes.c_void_p)
            spec = ctypes.byref(spec_struct)
        listing = self.lib.espeak_ListVoices(spec)
        voices = []
        index = 0
        while listing[index]:
            voices.append(listing[index].contents)
            index += 1
        return voices

    def _voice_names(self) -> frozenset[str]:
        """Every name espeak-ng resolves as a voice: voice names ("English (America)"), file
        identifiers ("gmw/en-US") and language codes ("en-us")."""
        names: set[str] = set()
        for voice in self._list_voices(None):
            for text in (voice.name, voice.identifier):
                if text:
                    names.add(text.decode("utf-8", "replace"))
            offset = voice.languages
            # Repeated (priority byte, NUL-terminated language), ended by a 0 priority byte.
            while offset and ctypes.c_ubyte.from_address(offset).value != 0:
                language = ctypes.string_at(offset + 1)
                names.add(language.decode("utf-8", "replace"))
                offset += 1 + len(language) + 1
        return frozenset(names)

    def _variant_names(self) -> frozenset[str]:
        """Names usable after "+" (e.g. "f3" in "en-us+f3"): variant identifiers minus "!v/"."""
        return frozenset(
            voice.identifier.decode("utf-8", "replace").rpartition("/")[2]
            for voice in self._list_voices(b"variant")
            if voice.identifier
        )


_library: _Library | None = None


def _get_library() -> _Library:
    """The process-wide library; the caller must hold `_LOCK`."""
    global _library
    if _library is None:
        _library = _Library()
    return _library


class EspeakNG:
    """espeak-ng speech synthesis. Cheap to create: the library loads on first use, once."""

    def synthesize(self, text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50) -> EspeakAudio:
        """Speak `text` and return all of its audio.

        `voice` is an espeak-ng voice name, identifier or language code ("en-us", "de",
        "gmw/en-US"), optionally with a variant ("en-us+f3"). `rate_wpm` is clamped by espeak-ng to
        80-450 words per minute; `pitch` runs 0-100 (50 is the voice's normal pitch).
        """
        with _LOCK:
            library = _get_library()
            if not text.strip():
                # espeak-ng would still emit a short pause; an empty request means no audio.
                return EspeakAudio(np.zeros(0, dtype=np.float32), library.sample_rate)

            lib = library.lib
            library.select_voice(voice)
            if not _MIN_RATE_WPM <= rate_wpm <= _MAX_RATE_WPM:
                raise EspeakError(f"rate {rate_wpm} wpm is outside {_MIN_RATE_WPM}-{_MAX_RATE_WPM}")
            if not 0 <= pitch <= 100:
                raise EspeakError(f"pitch {pitch} is outside 0-100")
            # Parameters are global and survive between calls: set both every time.
            lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
            lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)

            data = text.encode("utf-8")
            library.chunks = []
            try:
                status = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                # In synchronous mode espeak_Synth already returns after the last callback;
                # Synchronize is a cheap guarantee that nothing is still pending.
                lib.espeak_Synchronize()
                chunks = library.chunks
            finally:
                library.chunks = []
            if status != _EE_OK:
                raise EspeakError(f"espeak_Synth failed with status {status}")

        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        samples = pcm.astype(np.float32) / 32768.0
        return EspeakAudio(samples, library.sample_rate)

    def voices(self) -> list[str]:
        """Sorted names, identifiers and language codes that `synthesize` accepts as `voice`."""
        with _LOCK:
            return sorted(_get_library().voice_names)

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (initialises the library if needed)."""
        with _LOCK:
            return _get_library().sample_rate
