"""Mandarin speech from libespeak-ng 1.52, the library and data that PyPI's ``espeakng-loader`` ships.

Debian's espeak-ng 1.51 does not speak Mandarin: its ``cmn`` voice reads most characters as pinyin
with the tone digit in English (``espeak-ng -v cmn -x 你好中国`` gives ``(en)nI55Tr'i:55 ...``); 1.52
gives ``ni2χˈɑu2 ts.ˈonɡ5 kˈuoɜ``. espeak-ng marks every switch of language in its phonemes as
``(en)`` ... ``(cmn)``, so a sentence is checked before it is spoken and refused when the voice leaves
Mandarin for any part of it.

The library is driven through ctypes (its C API, ``speak_lib.h``): no maintained Python package
synthesizes with it (``espeakng-loader`` only locates it; phonemizer only reads phonemes). The
library keeps global state, so one process holds one ``MandarinSpeaker``; and it carries synthesis
state from one utterance to the next (even across espeak_Terminate and espeak_Initialize), so the
same text spoken twice in one process differs by a few samples. Speech that must be the same every
run is spoken in a fresh (forked) process per utterance, after ``espeak_ng_SetRandSeed``.
"""
from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass

import numpy as np

MIN_VERSION = (1, 52)
# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_PHONEMES_IPA = 0x02
_LANGUAGE_SWITCH = re.compile(r"\(([a-z][a-z-]*)\)")  # espeak-ng's "(en)" ... "(cmn)" marks
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    name: str  # espeak-ng voice+variant
    pitch: int  # 0-99 (espeak-ng -p)
    speed: int  # words per minute (espeak-ng -s)


class MissingEspeakError(RuntimeError):
    """espeakng-loader is not installed, or its library is older than 1.52."""


class LanguageSwitchError(ValueError):
    """The voice reads part of a sentence in another language; ``languages`` are the ones it switched to."""

    def __init__(self, text: str, voice: Voice, phonemes: str, languages: list[str]):
        self.languages = languages
        super().__init__(
            f"espeak-ng's {voice.name} voice reads '{text}' partly as {', '.join(languages)}, not Mandarin "
            f"(phonemes: {phonemes})"
        )


class MandarinSpeaker:
    """Speaks and phonemizes Mandarin text with one libespeak-ng (>= 1.52) per process: every
    ``MandarinSpeaker()`` of a process is the same one (a forked child's is its parent's). The library keeps global
    state; initialising it again in one process, as the test suite did from several places, is the likely cause of
    what broke two of its runs on 2026-12-05 (a segfault inside espeak_Synth; garbled phonemes in another)."""

    _instance: MandarinSpeaker | None = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __init__(self):
        if hasattr(self, "_lib"):  # this process's library, initialised once
            return
        try:
            import espeakng_loader
        except ImportError:
            raise MissingEspeakError(
                "the mini corpus speaks Mandarin through espeakng-loader's libespeak-ng 1.52: run tools/setup.sh "
                "(or pip install espeakng-loader==0.2.4)"
            ) from None
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise MissingEspeakError(f"libespeak-ng at {espeakng_loader.get_library_path()} failed to initialize")
        self.version = lib.espeak_Info(None).decode()
        if tuple(int(part) for part in self.version.split(".")[:2]) < MIN_VERSION:
            raise MissingEspeakError(f"libespeak-ng {self.version} does not speak Mandarin; 1.52 or later is needed")
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept referenced: the library calls it
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, _events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # go on

    def _set_voice(self, voice: Voice) -> None:
        if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice '{voice.name}'")
        self._lib.espeak_SetParameter(_RATE, voice.speed, 0)
        self._lib.espeak_SetParameter(_PITCH, voice.pitch, 0)

    def phonemes(self, text: str, voice: Voice) -> str:
        """The IPA phonemes the voice speaks, clauses separated by ' / ', language switches marked '(en)'."""
        self._set_voice(voice)
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        position = ctypes.c_void_p(ctypes.addressof(buffer))
        clauses = []
        while position.value:  # the library moves the pointer past each clause, to NULL at the end
            clauses.append(self._lib.espeak_TextToPhonemes(ctypes.byref(position), _CHARS_UTF8, _PHONEMES_IPA).decode())
        return " / ".join(clauses)

    def other_languages(self, text: str, voice: Voice) -> list[str]:
        """The languages other than Mandarin that the voice switches to for part of the text (1.52 reads
        Latin letters in English, and a few syllables, 0.4% of AISHELL-NER's dev sentences: 凶, 穷, ...)."""
        return sorted({lang for lang in _LANGUAGE_SWITCH.findall(self.phonemes(text, voice)) if lang != "cmn"})

    def check_mandarin(self, text: str, voice: Voice) -> None:
        """Raise LanguageSwitchError if the voice reads any part of the text in another language."""
        switched = self.other_languages(text, voice)
        if switched:
            raise LanguageSwitchError(text, voice, self.phonemes(text, voice), switched)

    def speak(self, text: str, voice: Voice) -> np.ndarray:
        """The text spoken by the voice: int16 samples at ``self.sample_rate`` (22,050 Hz); the same samples
        in every process that speaks only this (see the module docstring)."""
        self._set_voice(voice)
        self._lib.espeak_ng_SetRandSeed(0)
        self._chunks = []
        data = text.encode("utf-8")
        error = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if error != 0:
            raise RuntimeError(f"espeak-ng could not speak '{text}' (error {error})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
