"""--no-track with --clip: the spec is compared as the tracker reads it (case, spaces and an empty ':' do not
matter), the same way GRADWATCH_CLIP is, so both front-ends accept and refuse the same specs."""

import pytest

from tracker.clipping import parse_clip
from trainer.cli import parse_config

NO_CLIPPING = ["none", "NONE", "None", " none", "none:", " NoNe : "]


@pytest.fixture(autouse=True)
def no_env_clip(monkeypatch):
    monkeypatch.delenv("GRADWATCH_CLIP", raising=False)


@pytest.mark.parametrize("spec", NO_CLIPPING)
def test_any_spelling_of_none_is_accepted_with_no_track(spec):
    assert parse_clip(spec).spec == "none"  # the oracle: the tracker's own reading
    cfg, _ = parse_config(["--clip", spec, "--no-track"])
    assert cfg.no_track


@pytest.mark.parametrize("spec", NO_CLIPPING)
def test_the_cli_and_the_environment_agree(spec, monkeypatch):
    monkeypatch.setenv("GRADWATCH_CLIP", spec)
    assert parse_config(["--no-track"])[0].no_track
    monkeypatch.delenv("GRADWATCH_CLIP")
    assert parse_config(["--no-track", "--clip", spec])[0].no_track


@pytest.mark.parametrize("spec", ["norm:1", "NORM:1", "none+noise(0.01)", "autoclip"])
def test_clipping_with_no_track_is_refused(spec, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(["--clip", spec, "--no-track"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--clip {spec!r} would be ignored" in err and "Traceback" not in err


def test_a_bad_spec_with_no_track_is_named_as_bad(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(["--clip", "nonee", "--no-track"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--clip 'nonee'" in err and "unknown strategy 'nonee'" in err and "Traceback" not in err
