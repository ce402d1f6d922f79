from __future__ import annotations

import warnings

import pytest

from maskseg_monai.utils import BadInputError, as_bool, atomic_write, run_command


@pytest.mark.parametrize(
    "value,expected",
    [
        ("false", False),
        ("False", False),
        ("0", False),
        (False, False),
        ("true", True),
        ("YES", True),
        (1, True),
        (True, True),
    ],
)
def test_as_bool(value, expected):
    assert as_bool(value) is expected


def test_as_bool_rejects_other_words():
    with pytest.raises(ValueError, match="use_mps must be true or false, got 'maybe'"):
        as_bool("maybe", "use_mps")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out" / "model.pt"

    def fail(tmp: str) -> None:
        open(tmp, "wb").write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert not target.exists() and not list((tmp_path / "out").iterdir())
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"ok"))
    assert target.read_bytes() == b"ok" and len(list((tmp_path / "out").iterdir())) == 1


def test_error_summary_stops_at_raise_from_none():
    """``raise ... from None`` hides the context: the summary names the file, not the inner library error."""
    from maskseg_monai.utils import error_summary

    try:
        try:
            raise RuntimeError("PytorchStreamReader failed reading zip archive")
        except RuntimeError:
            raise RuntimeError("models/ckpt.pt: not a readable checkpoint (truncated?).") from None
    except RuntimeError as e:
        assert error_summary(e) == "error: RuntimeError: models/ckpt.pt: not a readable checkpoint (truncated?)."


def test_load_datalist_names_the_file(tmp_path):
    import json

    import pytest

    from maskseg_monai.data import load_datalist
    from maskseg_monai.utils import BadInputError, error_summary

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BadInputError, match=r"bad\.json: not valid JSON") as info:
        load_datalist(bad)
    assert error_summary(info.value).startswith(f"error: {bad}: not valid JSON")
    with pytest.raises(BadInputError, match="datalist file not found"):
        load_datalist(tmp_path / "missing.json")
    no_key = tmp_path / "no_key.json"
    no_key.write_text(json.dumps({"training": [{"image": "a.png"}]}))
    with pytest.raises(BadInputError, match=r"no_key\.json: not a usable datalist"):
        load_datalist(no_key, "validation")
    assert load_datalist(no_key) == [{"image": str(tmp_path / "a.png")}]


def test_run_command_exit_codes_and_warnings(capsys):
    codes = [(BadInputError, 1), ((ValueError, FileNotFoundError), 2)]

    def warn_then(exc=None):
        def action():
            warnings.warn("half the files have no label", UserWarning, stacklevel=2)
            if exc is not None:
                raise exc

        return action

    assert run_command(warn_then(), codes) == 0
    assert capsys.readouterr().err == "warning: half the files have no label\n"
    assert run_command(warn_then(BadInputError("a.nii: empty")), codes) == 1  # the first match wins
    assert capsys.readouterr().err == "error: a.nii: empty\nwarning: half the files have no label\n"
    assert run_command(warn_then(FileNotFoundError("b.json")), codes) == 2
    with pytest.raises(KeyError):  # not an expected failure: the traceback stays
        run_command(warn_then(KeyError("k")), codes)
    assert "warning: half the files" in capsys.readouterr().err  # printed also then
