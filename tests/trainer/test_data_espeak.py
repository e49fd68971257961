"""eSpeak NG through ctypes: real synthesis, voices, errors."""

import time

import numpy as np
import pytest

from trainer.data import espeak


def test_synthesize_gives_int16_speech_at_the_library_rate():
    wav = espeak.synthesize("yes", voice="en-us+f3")
    assert espeak.sample_rate() == 22050
    assert wav.dtype == np.int16 and wav.ndim == 1
    # a one-syllable word at 175 words/min lasts a few hundred ms and is not silent
    assert 0.15 < len(wav) / espeak.sample_rate() < 1.0
    assert np.abs(wav).max() > 1000


def test_rate_changes_duration():
    a = espeak.synthesize("three one four", voice="en+m3", rate=175)
    fast = espeak.synthesize("three one four", voice="en+m3", rate=350)
    assert len(fast) < 0.75 * len(a)


def test_counts_syntheses():
    before = espeak.synth_count()
    espeak.synthesize("go")
    assert espeak.synth_count() == before + 1


def test_voice_variants_are_the_packaged_files():
    variants = espeak.voice_variants()
    assert {"f1", "f3", "m1", "m3", "croak", "whisper"} <= set(variants)
    assert len(variants) >= 50 and variants == sorted(variants)


def test_unknown_voice_and_bad_parameters_are_named():
    with pytest.raises(espeak.EspeakError, match="no-such-voice"):
        espeak.synthesize("yes", voice="no-such-voice")
    with pytest.raises(ValueError, match="rate=20"):
        espeak.synthesize("yes", rate=20)
    with pytest.raises(ValueError, match="pitch=101"):
        espeak.synthesize("yes", pitch=101)


def test_reset_makes_synthesis_independent_of_history():
    # without reset, eSpeak NG's static counters make a repeated call differ by a few samples
    espeak.reset()
    first = espeak.synthesize("three one four", voice="en+m3")
    espeak.synthesize("something else entirely", voice="en-us+f2", rate=300)
    espeak.reset()
    again = espeak.synthesize("three one four", voice="en+m3")
    np.testing.assert_array_equal(first, again)


def test_breathy_voices_do_not_depend_on_the_time():
    # eSpeak NG seeds its noise generator with time(NULL) when it initialises; we reseed it after each load
    espeak.reset()
    first = espeak.synthesize("yes", voice="en+f2", rate=150, pitch=40)
    time.sleep(1.1)
    espeak.reset()
    np.testing.assert_array_equal(first, espeak.synthesize("yes", voice="en+f2", rate=150, pitch=40))


def test_a_ctrl_c_during_synthesis_is_raised_not_lost():
    # A Ctrl-C handled inside eSpeak's audio callback used to be printed as "Exception ignored" by ctypes
    # and dropped: generation went on with a chunk of that word missing, and the corpus was cached so.
    import os
    import signal
    import threading

    espeak.reset()
    whole = espeak.synthesize("go", voice="en")
    text = " ".join(["seven"] * 400)  # ~0.5 s of synthesis: the signal lands in a callback
    timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            espeak.synthesize(text, voice="en")
            time.sleep(5)  # (had synthesis ended first, the interrupt lands here; lost, nothing comes)
    finally:
        timer.join()
    espeak.reset()
    assert np.array_equal(espeak.synthesize("go", voice="en"), whole)  # nothing half-done is left
