"""Models on random tensors: shapes, the seed CNN layer for layer, CTC lengths against the conv formula."""

import pytest
import torch
from torch import nn

from trainer.models import MODEL_TASKS, MODELS, build_model


def test_seed_cnn_is_the_seed_document_model():
    torch.manual_seed(0)
    model = build_model("seed-cnn", n_classes=10)
    # The seed document's model, written out independently as a Sequential.
    reference = nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 16 * 16, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )
    ours = [p for _, p in model.named_parameters()]
    theirs = [p for _, p in reference.named_parameters()]
    assert [p.shape for p in ours] == [p.shape for p in theirs]
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            b.copy_(a)
    x = torch.randn(4, 1, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), reference(x))
    # 320 + 18,496 + 8,389,120 + 5,130 parameters (conv1, conv2, fc1, fc2)
    assert sum(p.numel() for p in model.parameters()) == 320 + 18_496 + 8_389_120 + 5_130


def test_seed_cnn_rejects_other_input_sizes():
    with pytest.raises(ValueError, match="32 mel × 32 frame"):
        build_model("seed-cnn", n_classes=10)(torch.randn(2, 1, 40, 32))


def test_resnet_kws_any_input_size_and_dropout_option():
    model = build_model("resnet-kws", n_classes=12, hidden_size=16, dropout=0.3)
    assert model(torch.randn(3, 1, 40, 50)).shape == (3, 12)
    assert model.dropout.p == 0.3


@pytest.mark.parametrize("name", ["crnn-ctc", "conformer-ctc"])
def test_ctc_models_lengths_and_log_probs(name):
    torch.manual_seed(0)
    model = build_model(name, n_classes=11, n_mels=40, hidden_size=32, num_layers=2)
    lengths = torch.tensor([101, 60, 7])
    x = torch.randn(3, 1, 40, 101)
    log_probs, out_lengths = model(x, lengths)
    # Conv with kernel 3, stride 2, padding 1: out = floor((L + 2 - 3) / 2) + 1 = floor((L + 1) / 2)
    assert out_lengths.tolist() == [(n + 1) // 2 for n in lengths.tolist()]
    assert log_probs.shape == (3, 51, 11) and log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 51))
    targets = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 0, 0]])
    loss = nn.functional.ctc_loss(
        log_probs.transpose(0, 1), targets, out_lengths, torch.tensor([3, 2, 1]), blank=0
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_crnn_lstm_option():
    model = build_model("crnn-ctc", n_classes=5, n_mels=16, rnn_type="lstm", hidden_size=8)
    assert isinstance(model.rnn, nn.LSTM)
    with pytest.raises(ValueError, match="'gru' or 'lstm'"):
        build_model("crnn-ctc", n_classes=5, n_mels=16, rnn_type="rnn")


def test_unknown_model_names_the_accepted_ones():
    with pytest.raises(ValueError, match="seed-cnn, resnet-kws, crnn-ctc, conformer-ctc"):
        build_model("vgg", n_classes=10)


def test_compatibility_table_covers_every_model():
    assert set(MODELS) == set(MODEL_TASKS)
    for name, tasks in MODEL_TASKS.items():
        model = build_model(name, n_classes=11, n_mels=32, hidden_size=16 if name != "conformer-ctc" else 32)
        assert (model.kind == "classify") == (tasks == ("keywords",))


@pytest.mark.parametrize("name", ["crnn-ctc", "conformer-ctc"])
@pytest.mark.parametrize("length", [101, 100], ids=["odd", "even"])
def test_ctc_output_of_an_utterance_does_not_depend_on_the_padding_of_its_batch(name, length):
    # Oracle: the utterance alone (no padding at all) against the same utterance zero-padded, as
    # collate_sequences pads it, in a batch with a 60-frame longer one. Trained-looking BatchNorm statistics
    # and affine parameters: fresh ones (mean 0, var 1, shift 0) hide a leak behind BN + ReLU.
    torch.manual_seed(0)
    model = build_model(name, n_classes=11, n_mels=40, hidden_size=32, num_layers=2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    model.eval()
    x, other = torch.randn(1, 1, 40, length), torch.randn(1, 1, 40, length + 60)
    batch = torch.cat([nn.functional.pad(x, (0, 60)), other])
    with torch.no_grad():
        alone, alone_lengths = model(x, torch.tensor([length]))
        batched, batched_lengths = model(batch, torch.tensor([length, length + 60]))
    n = int(alone_lengths[0])
    assert n == int(batched_lengths[0]) == alone.shape[1]
    torch.testing.assert_close(batched[0, :n], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["crnn-ctc", "conformer-ctc"])
def test_output_lengths_is_the_time_the_forward_pass_gives(name):
    # The trainer counts the utterances a model cannot align with output_lengths: the oracle is the time
    # dimension of an utterance's log-probabilities, evaluated alone (no padding), odd and even lengths.
    torch.manual_seed(0)
    model = build_model(name, n_classes=5, n_mels=16, hidden_size=8, num_layers=1).eval()
    lengths = list(range(1, 14))
    with torch.no_grad():
        times = [model(torch.randn(1, 1, 16, n), torch.tensor([n]))[0].shape[1] for n in lengths]
    assert model.output_lengths(torch.tensor(lengths)).tolist() == times
    assert times[:4] == [1, 1, 2, 2]  # (the front end halves time)
