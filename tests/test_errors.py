"""The error hierarchy: every cropstar error is a CropstarError and keeps the caller's message."""

import pytest

from cropstar.errors import CropstarError, DataError, InputError, ModelMismatchError

SUBCLASSES = [InputError, DataError, ModelMismatchError]


@pytest.mark.parametrize("cls", SUBCLASSES)
def test_subclass_of_cropstar_error(cls: type[CropstarError]) -> None:
    assert issubclass(cls, CropstarError)
    assert issubclass(cls, Exception)
    with pytest.raises(CropstarError):
        raise cls("boom")


def test_kinds_are_distinct() -> None:
    for cls in SUBCLASSES:
        for other in SUBCLASSES:
            if other is not cls:
                assert not issubclass(cls, other)


@pytest.mark.parametrize("cls", SUBCLASSES)
def test_message_kept(cls: type[CropstarError]) -> None:
    message = "band B11: expected 6 bands, found 5"
    with pytest.raises(cls, match="^band B11: expected 6 bands, found 5$") as info:
        raise cls(message)
    assert str(info.value) == message
    assert info.value.args == (message,)
