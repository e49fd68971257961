"""eSpeak NG through ctypes: text + voice + rate + pitch -> int16 waveform at the library's rate (22,050 Hz).

The shared library comes from the PyPI package ``espeakng-loader`` (it ships ``libespeak-ng.so`` and its data,
including the ~100 voice variants in ``voices/!v``). eSpeak NG keeps global state (current voice, parameters,
the callback), so one synthesis runs at a time per process: every call holds ``_LOCK``.

Two things make its output vary between identical calls: initialisation seeds its random generator (breath
noise) with the current time, so we seed it with 0 after every load; and static phase/flutter counters
survive ``espeak_Terminate`` and carry over from one utterance to the next, so ``reset()`` unloads the
library (``dlclose``) and the next call starts from the state of a fresh process. A corpus generator resets
before each speaker, so every speaker's audio depends only on its own parameters.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import signal
import threading
from pathlib import Path

import numpy as np

__all__ = ["EspeakError", "synthesize", "sample_rate", "voice_variants", "synth_count", "reset"]

# Constants from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_EE_OK = 0
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_LOCK = threading.Lock()
_state: dict = {}
_count = [0]  # utterances synthesised by this process; survives reset()


class EspeakError(RuntimeError):
    """eSpeak NG could not be loaded, or refused a voice or a text."""


def _library():
    """Load and initialise the library (once, or again after reset()); the caller holds ``_LOCK``.

    Returns (lib, sample_rate, data_path)."""
    if "lib" in _state:
        return _state["lib"], _state["rate"], _state["data"]
    try:
        import espeakng_loader
    except ImportError as e:  # the trainer extra is missing
        raise EspeakError(
            "the built-in corpus needs the package 'espeakng-loader' (pip install gradwatch[trainer])"
        ) from e
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    data = espeakng_loader.get_data_path()
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(), 0)
    if rate <= 0:
        raise EspeakError(f"espeak_Initialize failed with {rate} (data path {data})")
    # Initialisation seeds the library's own generator (breath noise of voices such as f2, whisper) with
    # time(NULL): without a fixed seed the same call differs from one second to the next.
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed(0)
    chunks: list[np.ndarray] = []

    def on_audio(wav, n, events):
        # An exception cannot leave a ctypes callback: ctypes prints it ("Exception ignored") and goes on,
        # and the word would come out with a chunk missing. Kept for synthesize() to raise once espeak_Synth
        # returns; 1 stops the synthesis. (A Ctrl-C is held off by synthesize(): it could land before `try`.)
        try:
            if n > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        except BaseException as exc:  # noqa: BLE001 - re-raised by synthesize()
            _state["error"] = exc
            return 1
        return 0  # 0 = go on synthesising

    callback = _CALLBACK(on_audio)  # kept in _state: ctypes callbacks must outlive their use
    lib.espeak_SetSynthCallback(callback)
    _state.update(lib=lib, rate=rate, data=Path(data), chunks=chunks, callback=callback, voice=None)
    return lib, rate, Path(data)


def sample_rate() -> int:
    """The rate of the waveforms ``synthesize`` returns (22,050 Hz for the packaged library)."""
    with _LOCK:
        return _library()[1]


def voice_variants() -> list[str]:
    """The packaged voice variants (``f3``, ``m1``, ``croak``, ...), sorted, to combine as ``en+f3``."""
    with _LOCK:
        data = _library()[2]
    return sorted(p.name for p in (data / "voices" / "!v").iterdir() if p.is_file())


def synth_count() -> int:
    """How many utterances this process has synthesised (lets callers and tests see a cache hit)."""
    return _count[0]


def reset() -> None:
    """Unload the library so the next synthesis starts from a fresh process's state (see the module doc)."""
    with _LOCK:
        lib = _state.pop("lib", None)
        if lib is not None:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)  # last reference: the next CDLL() maps fresh static data
        _state.clear()


def synthesize(text: str, voice: str = "en", rate: int = 175, pitch: int = 50) -> np.ndarray:
    """Speak ``text`` with ``voice`` (e.g. ``"en-us+f3"``) at ``rate`` words/min and ``pitch`` (0-100).

    Returns a 1-D int16 array at ``sample_rate()`` Hz. Raises ``EspeakError`` for an unknown voice.
    """
    if not 80 <= rate <= 450:
        raise ValueError(f"rate={rate} words/min is outside eSpeak NG's range 80-450")
    if not 0 <= pitch <= 100:
        raise ValueError(f"pitch={pitch} is outside eSpeak NG's range 0-100")
    with _LOCK:
        lib, _, _ = _library()
        if _state["voice"] != voice:
            if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise EspeakError(f"unknown eSpeak NG voice {voice!r} (variants: see voice_variants())")
            _state["voice"] = voice
        lib.espeak_SetParameter(_RATE, int(rate), 0)
        lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        chunks = _state["chunks"]
        chunks.clear()
        encoded = text.encode("utf-8")
        with _signals_after():
            lib.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, 0, None, None)
        error = _state.pop("error", None)
        if error is not None:  # (a Ctrl-C inside the callback: no half word is returned)
            chunks.clear()
            raise error
        _count[0] += 1
        wav = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        chunks.clear()
    return wav.astype(np.int16, copy=False)


@contextlib.contextmanager
def _signals_after():
    """Hold a Ctrl-C (SIGINT) that arrives during the block and hand it to the handler it was meant for once
    the block is over. Python runs signal handlers between bytecodes, so during synthesis that is inside the
    audio callback, where the KeyboardInterrupt was swallowed by ctypes (the word then lost a chunk, and the
    corpus was cached so). Only the main thread receives signals; elsewhere nothing is needed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:  # as it would have been handled: KeyboardInterrupt, or the trainer's stop flag
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt
