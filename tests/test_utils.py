from __future__ import annotations

import pytest

from maskseg_monai.utils import as_bool, atomic_write


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
