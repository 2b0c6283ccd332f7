"""The course's exercises check the learner's own prediction against what the cell measured.

Each exercise cell starts with `prediction = None` and the choices in a comment; the learner writes
theirs, runs the cell, and `check` says whether it was right. Left at None, the cell shows the
answer (so Run All still runs the whole notebook); a wrong prediction fails the cell with the
measured answer, as a test would.
"""

from __future__ import annotations


def check(prediction: str | None, answer: str, choices: tuple[str, ...]) -> bool | None:
    """True for a right prediction; None when none was made (the answer is printed); a wrong one,
    or one that is not among `choices`, raises AssertionError saying what was measured."""
    if answer not in choices:
        raise ValueError(f"the measured answer {answer!r} is not among the choices {choices}")
    if prediction is None:
        print(f"The answer: {answer}. Set prediction = one of {', '.join(map(repr, choices))} before running the cell "
              "to check yourself.")
        return None
    if prediction not in choices:
        raise AssertionError(f"prediction {prediction!r} is not one of {', '.join(map(repr, choices))}")
    if prediction != answer:
        raise AssertionError(f"you predicted {prediction!r}; it measured {answer!r}: read the numbers above and why")
    print(f"Right: {answer}.")
    return True
