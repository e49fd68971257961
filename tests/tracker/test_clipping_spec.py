"""The clip spec grammar: canonical round trips, helpful errors, validate_clip for forms."""

import pytest
import torch
from sqlite_rows import rows

from tracker import GradTracker
from tracker.clipping import (
    AGC,
    CLIP_SPEC_HELP,
    AutoClip,
    ClipSpecError,
    ClipStrategy,
    GradientNoise,
    LayerClip,
    NoClip,
    NormClip,
    RandomClip,
    ValueClip,
    ZClip,
    parse_clip,
    validate_clip,
)

CANONICAL = {
    "none": "none",
    " NONE ": "none",
    "value:0.5": "value:0.5",
    "norm:1": "norm:1.0",
    "Norm:1e-3": "norm:0.001",
    "norm:2@p=inf": "norm:2.0@p=inf",
    "norm:2@p=1": "norm:2.0@p=1.0",
    "norm:2@p=2": "norm:2.0",
    "layer:0.25": "layer:0.25",
    "agc:0.01": "agc:0.01",
    "agc:0.16,exclude=fc2,exclude=head.proj": "agc:0.16,exclude=fc2,exclude=head.proj",
    "autoclip": "autoclip:10.0",
    "autoclip:": "autoclip:10.0",
    "autoclip:5,window=1000": "autoclip:5.0,window=1000",
    "autoclip:window=50": "autoclip:10.0,window=50",
    "zclip": "zclip:2.5,alpha=0.97,warmup=25",
    "zclip:3": "zclip:3.0,alpha=0.97,warmup=25",
    "zclip:,alpha=0.9,warmup=10": "zclip:2.5,alpha=0.9,warmup=10",
    # The README's autoclip[:P][,window=N]: options straight after the name, the default P kept.
    "autoclip,window=1000": "autoclip:10.0,window=1000",
    "zclip ,warmup=10": "zclip:2.5,alpha=0.97,warmup=10",
    # Seeds are integers, exactly: past 2**53 a float would have changed them.
    "random:0.5-2,seed=9007199254740993": "random:0.5-2.0,seed=9007199254740993",
    "none+noise(0.3,seed=18446744073709551617)": "none+noise(0.3,0.55,seed=18446744073709551617)",
    "random:0.5-2": "random:0.5-2.0",
    "random: 1e-3 - 2 ,seed=7": "random:0.001-2.0,seed=7",
    "norm:linear(5,1,1000)": "norm:linear(5.0,1.0,1000)",
    "value:cosine(1, 0.1, 100)": "value:cosine(1.0,0.1,100)",
    "layer:step(1,0.5,10)": "layer:step(1.0,0.5,10)",
    "norm:warmup(1,100)": "norm:warmup(1.0,100)",
    "norm:1+noise(0.01)": "norm:1.0+noise(0.01,0.55)",
    "none + noise(0.3, 1, seed=4)": "none+noise(0.3,1.0,seed=4)",
    "norm:1e+3": "norm:1000.0",
    "norm:linear(2,1,10)@p=inf+noise(1e-2)": "norm:linear(2.0,1.0,10)@p=inf+noise(0.01,0.55)",
}


@pytest.mark.parametrize("spec, canonical", CANONICAL.items())
def test_canonical_round_trip(spec, canonical):
    strategy = parse_clip(spec)
    assert strategy.spec == canonical
    again = parse_clip(strategy.spec)
    assert again == strategy and again.spec == canonical


@pytest.mark.parametrize(
    "spec, cls, attrs",
    [
        ("none", NoClip, {}),
        ("value:0.5", ValueClip, {}),
        ("norm:2@p=inf", NormClip, {"norm_type": float("inf")}),
        ("layer:0.25", LayerClip, {}),
        ("agc:0.02,exclude=fc", AGC, {"clipping": 0.02, "exclude": ("fc",)}),
        ("autoclip:5,window=9", AutoClip, {"percentile": 5.0, "window": 9}),
        ("zclip:3,alpha=0.9,warmup=4", ZClip, {"z_thresh": 3.0, "alpha": 0.9, "warmup": 4}),
        ("random:1-3,seed=2", RandomClip, {"low": 1.0, "high": 3.0, "seed": 2}),
    ],
)
def test_parsed_objects(spec, cls, attrs):
    strategy = parse_clip(spec)
    assert type(strategy) is cls
    assert strategy.name == spec.split(":")[0]
    assert isinstance(strategy, ClipStrategy)
    for key, value in attrs.items():
        assert getattr(strategy, key) == value
    assert strategy.noise is None


def test_noise_part_is_parsed():
    s = parse_clip("layer:1+noise(0.2,0.6,seed=3)")
    assert s.noise == GradientNoise(0.2, 0.6, seed=3)


def test_objects_pass_through_and_none_means_no_clipping():
    obj = ZClip(2.0)
    assert parse_clip(obj) is obj
    assert parse_clip(None) == NoClip()
    with pytest.raises(TypeError, match="float"):
        parse_clip(1.0)


BAD = {
    "norm:abc": ["'abc' is not a number", "expected e.g. 'norm:1.0'", "accepted: none, value:C"],
    "norm:-1": ["> 0", "-1"],
    "value:0": ["> 0"],
    "layer:nan": ["'nan' is not a number"],
    "norm:inf": ["'inf' is not a number"],
    "norm:1e999": ["finite"],
    "norm": ["needs a threshold"],
    "norm:": ["needs a threshold"],
    "clip:1": ["unknown strategy 'clip'"],
    "": ["empty spec"],
    "autoclip:0": ["(0, 100]", "not a 0-1 quantile"],
    "autoclip:101": ["(0, 100]"],
    "autoclip:10,window=0": ["window", ">= 1"],
    "autoclip:10,window=2.5": ["not an integer"],
    "zclip:-1": ["Z must be"],
    "zclip:2,alpha=1.5": ["alpha must be in (0, 1)"],
    "zclip:2,warmup=0": ["warmup"],
    "zclip:2,beta=1": ["unknown option 'beta'", "alpha=, warmup="],
    "random:2-1": ["LO <= HI"],
    "random:1": ["range LO-HI"],
    "random:0-1": ["> 0"],
    "agc:0": ["> 0"],
    "agc:": ["needs a clipping factor"],
    "norm:1,2": ["1 positional"],
    "norm:1@q=2": ["'@p=P'"],
    "norm:1@p=0.5": [">= 1 or inf"],
    "norm:linear(1,2)": ["takes 3 arguments"],
    "norm:linear(1,0.1,0)": ["integer >= 1"],
    "norm:cosine(1,-1,10)": ["> 0"],
    "norm:step(1,0,10)": ["factor"],
    "norm:exp(1,2,3)": ["unknown schedule 'exp'"],
    "norm:linear(1,2,3": ["unbalanced"],
    "norm:1+noise()": ["noise needs eta"],
    "norm:1+noise(-1)": ["eta must be"],
    "norm:1+noise(0.1,-2)": ["gamma"],
    "norm:1+jitter(1)": ["+noise("],
    "norm:1+noise(1)+noise(1)": ["at most one"],
    "none:1": ["takes no arguments"],
    "none,1": ["takes no arguments"],
    "norm1": ["not of the form NAME or NAME:ARGS", "expected e.g. 'norm:1.0'"],
    "autoclip;5": ["not of the form NAME or NAME:ARGS", "expected e.g. 'autoclip:10'"],
    "layer:1@p=inf": ["'@p=' (the norm type) is an option of norm only", "expected e.g. 'layer:1.0'"],
    "value:1@p=2": ["'@p=' (the norm type) is an option of norm only", "expected e.g. 'value:0.5'"],
}


@pytest.mark.parametrize("spec, fragments", BAD.items())
def test_bad_specs_name_the_problem(spec, fragments):
    with pytest.raises(ClipSpecError) as info:
        parse_clip(spec)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"invalid clip spec {spec!r}")
    for fragment in fragments:
        assert fragment in message
    assert validate_clip(spec) == message


# torch.finfo(torch.float32).max written out: thresholds become float32 tensors, which cannot hold more.
FLOAT32_MAX = "3.4028234663852886e+38"

TOO_LARGE = {
    "norm:3.5e38": ("threshold", "3.5e+38"),
    "value:1e39": ("threshold", "1e+39"),
    "layer:1e40": ("threshold", "1e+40"),
    "norm:1e300@p=inf": ("threshold", "1e+300"),
    "random:1-1e39": ("random upper bound HI", "1e+39"),
    "random:1e39-1e40": ("random lower bound LO", "1e+39"),
    "agc:1e39": ("agc clipping factor L", "1e+39"),
    "norm:linear(1e39,1,10)": ("linear(): threshold", "1e+39"),
    "value:cosine(1,1e39,10)": ("cosine(): threshold", "1e+39"),
    "layer:step(1e39,0.5,10)": ("step(): threshold", "1e+39"),
    "norm:warmup(1e39,10)": ("warmup(): threshold", "1e+39"),
    "norm:1+noise(1e39)": ("noise eta", "1e+39"),
}


# torch.finfo(torch.float32).tiny: below it a threshold is subnormal or 0 in float32, and wipes the gradients.
FLOAT32_TINY = "1.1754943508222875e-38"

TOO_SMALL = {
    "norm:1e-50": ("threshold", "1e-50"),
    "value:1e-46": ("threshold", "1e-46"),
    "layer:1e-39": ("threshold", "1e-39"),
    "random:1e-50-2": ("random lower bound LO", "1e-50"),
    "random:1e-50-2e-50": ("random lower bound LO", "1e-50"),
    "agc:1e-40": ("agc clipping factor L", "1e-40"),
    "norm:linear(1,1e-39,10)": ("linear(): threshold", "1e-39"),
    "norm:warmup(1e-45,10)": ("warmup(): threshold", "1e-45"),
}


@pytest.mark.parametrize("spec, what_and_value", TOO_SMALL.items())
def test_numbers_below_the_normal_float32_range_are_rejected(spec, what_and_value):
    # Accepted, they became a float32 threshold of 0 (or a subnormal one) that zeroed every gradient.
    what, value = what_and_value
    message = validate_clip(spec)
    assert message.startswith(f"invalid clip spec {spec!r}: ")
    assert f"{what} must be at least {FLOAT32_TINY} (the smallest normal float32), got {value}" in message
    assert float(FLOAT32_TINY) == torch.finfo(torch.float32).tiny
    if "2e-50" not in spec:
        assert validate_clip(spec.replace(value, FLOAT32_TINY)) is None
    # (noise's eta is a variance, not a threshold: a tiny one is merely no noise)
    assert validate_clip("norm:1+noise(1e-50)") is None


@pytest.mark.parametrize("spec, what_and_value", TOO_LARGE.items())
def test_numbers_above_the_float32_range_are_rejected(spec, what_and_value):
    # Accepted, they crashed tracker.step() with a torch overflow error when the threshold tensor was made.
    what, value = what_and_value
    with pytest.raises(ClipSpecError) as info:
        parse_clip(spec)
    message = str(info.value)
    assert message.startswith(f"invalid clip spec {spec!r}: ")
    assert f"{what} must be at most {FLOAT32_MAX} (the largest finite float32), got {value}" in message
    assert validate_clip(spec) == message


def test_the_float32_limit_itself_is_accepted():
    assert float(FLOAT32_MAX) == torch.finfo(torch.float32).max
    for spec in [f"norm:{FLOAT32_MAX}", f"random:1-{FLOAT32_MAX}", f"value:linear(1,{FLOAT32_MAX},10)"]:
        assert validate_clip(spec) is None, spec
    # A step factor is not a threshold: a schedule that grows past the limit is capped at it instead.
    assert validate_clip("norm:step(1,1e300,1)") is None


@pytest.mark.parametrize("clip", ["norm", "value", "layer", "agc"])
def test_the_float32_limit_as_the_store_prints_it_is_accepted(tmp_path, clip):
    # The store keeps float32 values as their shortest decimal; for FLOAT32_MAX that is 3.4028235e+38, a
    # hair above it as a float64. A threshold read back from a run and pasted into a spec must be accepted.
    model = torch.nn.Linear(3, 2)
    with GradTracker(model, db=tmp_path / "g.db", run="limit", clip=f"{clip}:{FLOAT32_MAX}") as tracker:
        model(torch.randn(4, 3)).sum().backward()
        tracker.step()
    [(recorded,)] = rows(tmp_path / "g.db", "SELECT threshold FROM clip_events")
    assert recorded == 3.4028235e38 > torch.finfo(torch.float32).max
    for spec in [f"{clip}:{recorded!r}", f"random:1-{recorded!r}", f"norm:linear(1,{recorded!r},10)"]:
        assert validate_clip(spec) is None, spec
    assert validate_clip(f"norm:1+noise({recorded!r})") is None
    with GradTracker(model, db=tmp_path / "g.db", run="pasted", clip=f"{clip}:{recorded!r}") as tracker:
        model(torch.randn(4, 3)).sum().backward()
        assert tracker.step().threshold == recorded  # float32's max, as the store prints it
    # Written either way, it is the same strategy.
    assert parse_clip(f"{clip}:{recorded!r}") == parse_clip(f"{clip}:{FLOAT32_MAX}")
    # The next float64 up rounds to inf in float32: still refused.
    assert validate_clip("norm:3.40282357e+38") is not None


def test_constructors_reject_thresholds_above_the_float32_range():
    for make in (
        lambda: NormClip(1e39),
        lambda: LayerClip(1e39),
        lambda: ValueClip(1e39),
        lambda: RandomClip(1.0, 1e39),
        lambda: AGC(1e39),
        lambda: GradientNoise(1e39),
    ):
        with pytest.raises(ClipSpecError, match="the largest finite float32"):
            make()


def test_error_examples_match_the_strategy():
    assert "expected e.g. 'autoclip:10'" in validate_clip("autoclip:500")
    assert "expected e.g. 'random:0.5-2.0'" in validate_clip("random:x")


def test_validate_clip_accepts_good_specs_and_objects():
    assert validate_clip("norm:1.0") is None
    assert validate_clip(AutoClip()) is None
    assert "spec string" in validate_clip(3)


def test_constructors_validate_too():
    with pytest.raises(ClipSpecError, match="norm threshold C"):
        NormClip(-2.0)
    with pytest.raises(ClipSpecError, match="percentile"):
        AutoClip(0.5 - 1)
    with pytest.raises(ClipSpecError, match="exclude"):
        AGC(0.01, exclude=["a,b"])


def test_help_lists_every_strategy_and_its_examples_parse():
    for name in ("none", "value:", "norm:", "layer:", "agc:", "autoclip:", "zclip:", "random:", "noise("):
        assert name in CLIP_SPEC_HELP
    for line in CLIP_SPEC_HELP.splitlines()[1:]:
        assert validate_clip(line.split()[0]) is None, line


def test_a_users_strategy_subclass_without_shards_clips_through_the_tracker(db_path):
    # docs/clipping.md: subclass Strategy, implement _base_spec and _clip(grads, norms, total_norm, *, params,
    # step, names). clip_ used to pass shards= to every _clip: a TypeError at the first step.
    from tracker.clipping import ClipResult, Strategy

    class Halve(Strategy):
        name = "halve"

        def _base_spec(self):
            return "halve"

        def _clip(self, grads, norms, total_norm, *, params, step, names):
            torch._foreach_mul_(grads, 0.5)
            one = torch.ones((), device=total_norm.device)
            return ClipResult(
                one * torch.nan, one * 0.5, total_norm * 0.5, one.bool(), one.long() * len(grads)
            )

    model = torch.nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    want = [p.grad * 0.5 for p in model.parameters()]  # the oracle: what halving gives
    with GradTracker(model, db=db_path, clip=Halve()) as tracker:
        stats = tracker.step()
    assert stats.clipped and stats.coef == 0.5
    for p, w in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w, rtol=0, atol=0)
    assert rows(db_path, "SELECT strategy, coef, clipped FROM clip_events") == [("halve", 0.5, 1)]
