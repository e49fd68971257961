"""The clip form's spec builder and its inverse agree with the tracker's own parser."""

import pytest

from dashboard.clipform import STRATEGIES, build_spec, form_values
from tracker.clipping import parse_clip


@pytest.mark.parametrize(
    "spec",
    ["none", "norm:1", "value:0.5", "layer:2.5e-3", "agc:0.01", "agc:0.02,exclude=fc,exclude=head",
     "autoclip:10", "autoclip:5,window=100", "zclip:2.5", "zclip:3,alpha=0.9,warmup=10", "random:0.5-2",
     "norm:1.0+noise(0.01)", "autoclip:10+noise(0.3,0.7)"],
)  # fmt: skip
def test_form_round_trip_gives_the_same_strategy(spec):
    canonical = parse_clip(spec).spec
    values = form_values(canonical)
    assert values is not None
    rebuilt = build_spec(values["strategy"], values["params"], noise_eta=values["noise_eta"],
                         noise_gamma=values["noise_gamma"])  # fmt: skip
    assert parse_clip(rebuilt).spec == canonical


@pytest.mark.parametrize("spec", ["norm:linear(5,1,1000)", "norm:1.0@p=inf", "random:0.5-2,seed=3"])
def test_specs_the_form_cannot_express(spec):
    assert form_values(parse_clip(spec).spec) is None


def test_every_strategy_default_is_valid():
    for strategy, info in STRATEGIES.items():
        defaults = {name: default for name, (_, default) in info["params"].items()}
        assert parse_clip(build_spec(strategy, defaults)).name == strategy


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy 'clamp'"):
        build_spec("clamp", {})
