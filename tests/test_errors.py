"""UserError: the one-line error every bad input becomes, also across a process boundary."""

from __future__ import annotations

import pickle

from introspect_mi.errors import UnknownName, UserError


def test_a_user_error_pickles_as_itself() -> None:
    back = pickle.loads(pickle.dumps(UserError("the store is damaged", "capture again")))
    assert type(back) is UserError and (back.problem, back.fix) == ("the store is damaged", "capture again")
    assert str(back) == "the store is damaged — capture again"


def test_a_subclass_with_its_own_arguments_pickles_too() -> None:
    err = UnknownName("task", "aminals", ["animals", "colours"])
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is UnknownName and isinstance(back, ValueError)
    assert (back.problem, back.fix) == (err.problem, err.fix) and str(back) == str(err)
