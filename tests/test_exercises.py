"""The exercises' check: the learner's prediction against the measured answer."""

from __future__ import annotations

import pytest

from portraitkit.teach.exercises import check


def test_a_prediction_is_right_wrong_or_not_yet_made(capsys):
    assert check("less", "less", ("more", "less")) is True and "Right: less" in capsys.readouterr().out
    assert check(None, "less", ("more", "less")) is None and "The answer: less." in capsys.readouterr().out
    with pytest.raises(AssertionError, match="you predicted 'more'; it measured 'less'"):
        check("more", "less", ("more", "less"))
    with pytest.raises(AssertionError, match="not one of"):
        check("fewer", "less", ("more", "less"))  # a typo is not a wrong answer counted as right
    with pytest.raises(ValueError):
        check(None, "half", ("more", "less"))  # the notebook's own mistake, not the learner's
