"""`python -m experiments.finetune_sweep`: how a `--settings` entry becomes a finetune config."""

from __future__ import annotations

import dataclasses

import pytest

from experiments.finetune_sweep import Setting
from introspect_mi.errors import UserError
from introspect_mi.finetune_config import PRESETS


def test_a_setting_overrides_preset_fields_with_their_types_and_names_its_adapter_folder() -> None:
    s = Setting.parse("lr=1e-3,epochs=1,rank=8,replay=0.5", PRESETS["quick"])
    assert s.overrides == {"lr": 1e-3, "epochs": 1, "rank": 8} and s.replay == 0.5
    assert s.label == "lr1e-3_epochs1_rank8_replay0.5"
    config = dataclasses.replace(PRESETS["quick"], **s.overrides)
    assert (config.lr, config.epochs, config.rank, config.alpha) == (1e-3, 1, 8, PRESETS["quick"].alpha)
    assert isinstance(config.epochs, int) and isinstance(config.lr, float)


@pytest.mark.parametrize("text,message", [("lr", "not field=value"), ("learning_rate=1e-3", "unknown field"),
                                          ("target_modules=q_proj", "unknown field"), ("epochs=two", "needs a number")])
def test_a_bad_setting_is_a_user_error_naming_it(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Setting.parse(text, PRESETS["quick"])
