"""Log-mel, SpecAugment and resampling against direct torchaudio calls and textbook facts."""

import math

import pytest
import torch
import torchaudio

from trainer.data import FeatureSpec, LogMel, SpecAugment, keyword_features, sequence_features
from trainer.data.features import to_sample_rate


def oracle_logmel(wav, sample_rate, n_fft, win_length, hop_length, n_mels):
    """A direct MelSpectrogram + AmplitudeToDB(top_db=80) call, then mean/std normalisation."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length, n_mels=n_mels
    )(wav)
    db = torchaudio.transforms.AmplitudeToDB("power", top_db=80)(mel)
    return (db - db.mean()) / (db.std() + 1e-5)


def test_keyword_logmel_is_32_by_32_and_equals_torchaudio():
    torch.manual_seed(0)
    wav = torch.randn(16000) * torch.linspace(0, 1, 16000)
    spec = keyword_features()
    assert (spec.n_mels, spec.frames, spec.hop_length) == (32, 32, 516)
    got = LogMel(spec)(wav)
    assert got.shape == (32, 32)
    want = oracle_logmel(wav, 16000, 640, 640, 516, 32)
    assert want.shape == (32, 32)  # 1 + 16000 // 516 frames: no cropping needed
    torch.testing.assert_close(got, want)


def test_sequence_logmel_has_10ms_frames_and_equals_torchaudio():
    torch.manual_seed(1)
    wav = torch.randn(12345)
    got = LogMel(sequence_features(40))(wav)
    assert got.shape == (40, 1 + 12345 // 160)
    torch.testing.assert_close(got, oracle_logmel(wav, 16000, 400, 400, 160, 40))


def test_a_batch_gives_each_utterance_its_own_result():
    # AmplitudeToDB's top_db floor must stay per utterance inside a batch
    torch.manual_seed(2)
    batch = torch.randn(3, 16000) * torch.tensor([[1.0], [1e-3], [10.0]])
    logmel = LogMel(keyword_features())
    together = logmel(batch)
    for i in range(3):
        torch.testing.assert_close(together[i], logmel(batch[i]))
        torch.testing.assert_close(together[i].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)


def test_a_tone_lights_the_mel_band_of_its_frequency():
    t = torch.arange(16000) / 16000
    x = LogMel(keyword_features())(torch.sin(2 * math.pi * 1000 * t))
    fb = torchaudio.functional.melscale_fbanks(321, 0.0, 8000.0, 32, 16000)  # n_fft 640 -> 321 bins
    expected_band = int(fb[40].argmax())  # 1 kHz is FFT bin 1000 / (16000 / 640) = 40
    assert int(x.mean(dim=1).argmax()) == expected_band


def test_frames_are_cropped_or_padded_to_the_requested_count():
    spec = keyword_features(n_mels=20, frames=40)
    assert LogMel(spec)(torch.randn(16000)).shape == (20, 40)
    assert LogMel(spec)(torch.randn(8000)).shape == (20, 40)  # shorter clip: zero-padded at the end


def test_specaugment_masks_bands_and_frames_with_zeros():
    torch.manual_seed(3)
    x = torch.randn(1, 40, 200) + 5  # no zeros before masking
    y = SpecAugment(freq_mask=8, time_mask=30, n_masks=2)(x)
    assert y.shape == x.shape
    zero_bands = (y == 0).all(dim=2).sum()
    zero_frames = (y == 0).all(dim=1).sum()
    assert zero_bands + zero_frames > 0
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept])
    aug = SpecAugment.for_spec(sequence_features(40))
    assert (aug.freq.mask_param, aug.time.mask_param) == (5, 20)


def test_resampling_equals_torchaudio_and_keeps_a_tone():
    t = torch.arange(44100) / 44100
    tone = torch.sin(2 * math.pi * 440 * t)
    out = to_sample_rate(tone, 44100)
    torch.testing.assert_close(out, torchaudio.functional.resample(tone, 44100, 16000))
    assert out.shape == (16000,)
    peak_hz = torch.fft.rfft(out).abs().argmax().item() * 16000 / len(out)
    assert peak_hz == pytest.approx(440, abs=1)
    assert to_sample_rate(tone, 16000, 16000) is tone


def test_bad_feature_parameters_are_named():
    with pytest.raises(ValueError, match="frames=1"):
        keyword_features(frames=1)
    with pytest.raises(ValueError, match="invalid log-mel"):
        FeatureSpec(n_mels=0, n_fft=400, win_length=400, hop_length=160)
    with pytest.raises(ValueError, match="sample rate 0"):
        to_sample_rate(torch.zeros(10), 0)
