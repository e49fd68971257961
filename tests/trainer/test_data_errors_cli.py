"""The trainer's command line on corpora it cannot use (exit 2, one `error:` line naming the path, no
traceback) and on corpora it uses with reservations (one `warning:` line each, the run goes on)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import soundfile

from trainer.cli import main, parse_config

COMMON = [
    "--no-track",
    "--clip",
    "none",
    "--max-steps",
    "1",
    "--batch-size",
    "8",
    "--quiet",
    "--device",
    "cpu",
]


def test_an_empty_data_path_is_refused(capsys):
    # Path("") is the current folder: it used to be read as the corpus.
    for data in ("speech_commands", "transcripts"):
        task = "keywords" if data == "speech_commands" else "digits"
        with pytest.raises(SystemExit) as exc:
            parse_config(["--data", data, "--task", task, "--data-path", ""])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"--data-path '': give the {data} corpus folder" in err and "Traceback" not in err


# The OS refuses what is unreadable only without CAP_DAC_OVERRIDE (root has it): the trainer runs in a
# process that drops it, through setpriv, when the tests run as root.
DROP_OVERRIDE = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                 "--bounding-set=-dac_override,-dac_read_search"]  # fmt: skip
RUN_MAINS = """
import contextlib, io, json, sys
from trainer.cli import main
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
"""


def unprivileged(tmp_path):
    """The command prefix under which permissions bite, or skip the test."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: unreadable files cannot be made unreadable")
        prefix = DROP_OVERRIDE
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    if subprocess.run([*prefix, "cat", str(probe)], capture_output=True).returncode == 0:
        pytest.skip("permissions are not enforced here")
    return prefix


def test_unreadable_corpus_parts_exit_2_naming_them(speech_commands_dir, transcripts_dir, tmp_path):
    # They used to end in a PermissionError traceback (exit 1), or libsndfile's "System error." for audio.
    prefix = unprivileged(tmp_path)
    sc, tr = speech_commands_dir, transcripts_dir
    cases, needles = {}, {}
    for name, corpus, part, verb in [
        ("sc audio file", sc, "yes/0a1b2c3d_nohash_0.wav", "cannot read "),
        ("sc word folder", sc, "no", "cannot read "),
        ("sc list file", sc, "validation_list.txt", "cannot read "),
        ("sc corpus folder", sc, ".", "cannot read "),
        ("transcripts file", tr, "transcripts.tsv", "cannot read "),
        ("transcripts audio file", tr, "audio/s1_0.wav", "cannot read "),
        ("transcripts corpus folder", tr, ".", ""),  # (a loader may not name it: then the trainer does)
    ]:
        copy = shutil.copytree(corpus, tmp_path / name.replace(" ", "_"))
        (copy / part).chmod(0)
        needles[name] = f"{verb}{str((copy / part).resolve())!r} (permission denied)"
        data, task = ("speech_commands", "keywords") if corpus == sc else ("transcripts", "digits")
        cache = tmp_path / f"cache_{len(cases)}"
        cases[name] = ["--data", data, "--task", task, "--data-path", str(copy), "--cache-dir", str(cache),
                       *COMMON]  # fmt: skip
    run = subprocess.run(
        [*prefix, sys.executable, "-c", RUN_MAINS, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    for name, (code, err) in json.loads(run.stdout).items():
        assert code == 2, (name, err)
        assert needles[name] in err, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("python -m trainer: error: "), (name, err)


def test_what_a_corpus_loader_skips_is_one_warning_line_each(speech_commands_dir, tmp_path, capsys):
    root = shutil.copytree(speech_commands_dir, tmp_path / "sc")
    with open(root / "validation_list.txt", "a") as f:
        f.write("yes/deleted_nohash_0.wav\n")
    soundfile.write(root / "go" / "9f9f9f9f_nohash_0.flac", [0.1] * 8000, 16000)
    argv = ["--data", "speech_commands", "--data-path", str(root), "--cache-dir", str(tmp_path / "c"),
            *COMMON]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 2, err
    assert "not .wav" in warned[0] and "'go/9f9f9f9f_nohash_0.flac'" in warned[0]
    assert "1 of the 11 lines of" in warned[1] and "'yes/deleted_nohash_0.wav'" in warned[1]
    assert "CorpusWarning" not in err and "warnings.warn" not in err  # not Python's two-line format


def test_paths_under_a_folder_that_cannot_be_searched_exit_2_saying_permission_denied(tmp_path):
    # Looking at such a path (is_dir, exists) raises PermissionError: it ended in a traceback from the
    # command line's own checks, before any data was read.
    prefix = unprivileged(tmp_path)
    locked = tmp_path / "locked"
    (locked / "corpus").mkdir(parents=True)
    locked.chmod(0o600)  # readable, not searchable: nothing inside it can be looked at
    inside = str(locked / "x")
    cases = {
        "--data-path": ["--data", "speech_commands", "--task", "keywords", "--data-path", inside],
        "--cache-dir": ["--cache-dir", inside],
        "--checkpoint": ["--checkpoint", f"{inside}/run.ckpt"],
        "--config": ["--config", f"{inside}.json"],
    }
    cases = {name: [*argv, *COMMON] for name, argv in cases.items()}
    command = [*prefix, sys.executable, "-c", RUN_MAINS, json.dumps(cases)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for flag, (code, err) in json.loads(run.stdout).items():
        assert code == 2 and "Traceback" not in err, (flag, err)
        errors = [line for line in err.splitlines() if "error" in line]
        assert errors == [errors[-1]] and errors[0].startswith(f"python -m trainer: error: {flag} "), err
        assert f"(permission denied: the folder {str(locked)!r} cannot be searched)" in errors[0], err


@pytest.mark.parametrize(("fmt", "name"), [("AIFF", "s1_0.aiff"), ("RF64", "s1_0.wav"), ("W64", "s1_0.w64")])
def test_a_truncated_aiff_rf64_or_w64_file_exits_2_naming_it(fmt, name, transcripts_dir, tmp_path, capsys):
    # They were read as far as they went and trained on, their transcripts describing audio they lacked.
    root = shutil.copytree(transcripts_dir, tmp_path / "tr")
    wav, rate = soundfile.read(root / "audio" / "s1_0.wav", dtype="float32")
    (root / "audio" / "s1_0.wav").unlink()
    cut = root / "audio" / name
    soundfile.write(cut, wav, rate, format=fmt, subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size - len(wav)])  # half its samples are left
    tsv = root / "transcripts.tsv"
    tsv.write_text(tsv.read_text().replace("audio/s1_0.wav", f"audio/{name}"))
    argv = ["--data", "transcripts", "--task", "digits", "--data-path", str(root),
            "--cache-dir", str(tmp_path / "cache"), *COMMON]  # fmt: skip
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m trainer: error: "), lines
    assert (
        f"{str(cut.resolve())!r} is truncated: it holds {len(wav) // 2} of the {len(wav)} frames" in lines[0]
    )
