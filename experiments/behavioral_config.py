"""Configs of the behavioural experiments (field docstrings are the --help texts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from introspect_mi.errors import UnknownName

HELD_OUT = ("animals", "english_words", "myopic_reward", "survival_instinct", "mcq_general")
TRAIN = ("countries", "colours", "wealth_seeking", "power_seeking", "mcq_arithmetic", "numbers")


@dataclass(frozen=True)
class RunSettings:
    """Settings every behavioural run shares (inherited by both configs)."""

    calibration_task: str = "animals"
    """Task for the calibration measurement (PROTOCOL.md: animals)."""
    calibration_property: str = "second_character"
    """Property for the calibration measurement (PROTOCOL.md: second character)."""
    calibration_items: int = 50
    """Prompts for calibration (0 skips it)."""
    calibration_samples: int = 20
    """T=1 samples per prompt for the sampled MAD, object-level and hypothetical alike (PROTOCOL.md: 20)."""
    batch_size: int = 32
    """Prompts per forward pass (fixed per run: batch composition can shift results slightly)."""
    n_boot: int = 1000
    """Bootstrap resamples for confidence intervals."""
    seed: int = 0
    """Seed for tasks, data selection, finetuning, bootstrap and sampling."""
    device: str = ""
    """cpu, cuda, … (empty: cuda if available, else cpu)."""
    name: str = ""
    """Run folder name under runs/ (empty: derived from the models)."""


@dataclass(frozen=True)
class EvalConfig(RunSettings):
    predictor: tuple[str, ...] = ("smollm2-135m-instruct",)
    """Predictor models (embedded name, HF folder or .gguf); each answers the hypothetical questions."""
    predictor_adapter: tuple[str, ...] = ()
    """LoRA adapters for the predictors, in the same order ('-' for none)."""
    target: str = "smollm2-135m-instruct"
    """The model whose object-level behaviour is predicted (ground truth: its T=0 answers)."""
    target_adapter: str = ""
    """LoRA adapter for the target (empty: none)."""
    tasks: tuple[str, ...] = HELD_OUT
    """Object-level tasks to evaluate on (held-out tasks of the paper split by default)."""
    properties: tuple[str, ...] = ()
    """Response properties to ask about (empty: every property that applies to each task)."""
    split: str = "val"
    """Task split the items come from."""
    limit: int = 100
    """Items per task."""
    shots: int = 2
    """Format demonstrations in each prompt (0 = the paper's zero-shot prompts)."""


@dataclass(frozen=True)
class StudyConfig(RunSettings):
    m1: str = "smollm2-135m-instruct"
    """M1: the model that is self-trained and whose behaviour is predicted."""
    m2: str = "gemma3-270m"
    """M2: the cross-predictor, trained on self-trained M1's behaviour."""
    train_tasks: tuple[str, ...] = TRAIN
    """Tasks whose hypothetical questions are finetuned on."""
    held_out_tasks: tuple[str, ...] = HELD_OUT
    """Tasks evaluated on (never trained on)."""
    properties: tuple[str, ...] = ()
    """Properties to train and evaluate (empty: every property that applies)."""
    train_items: int = 100
    """Object-level items per training task (train split)."""
    per_cell: int = 40
    """Finetuning examples per task × property (PROTOCOL.md: up to 1000)."""
    eval_items: int = 50
    """Items per held-out task (val split)."""
    object_shots: int = 2
    """Format demonstrations in object-level prompts."""
    untrained_shots: int = 2
    """Format demonstrations in the untrained model's hypothetical prompts."""
    trained_shots: int = 0
    """Format demonstrations in finetuned models' hypothetical prompts (training and evaluation)."""
    finetune: str = "quick"
    """Finetune preset (introspect_mi.finetune_config.PRESETS): quick (CPU) or paper (rank 32, lr 2e-5, 1 epoch, batch 16)."""
    epochs: int = 0
    """Override the preset's epochs (0: keep)."""
    lr: float = 0.0
    """Override the preset's learning rate (0: keep)."""
    object_replay: float = 0.0
    """Object-level replay mixed into the self and cross finetunes, as a fraction of the self examples: each model's own T=0 answers to the same training items' object-level prompts. Not in the paper (0 = its data); it keeps a small model's behaviour, which its self-predictions are scored against, from drifting (README: measurements)."""
    behaviour_change_items: int = 200
    """Object-level answers of M2 that M_C is finetuned on (PROTOCOL.md: ~1000)."""
    behaviour_change_lr: float = 0.0
    """Learning rate of the behaviour-change finetune (0: a tenth of the preset's, 'lr low')."""
    self_rounds: int = 1
    """Self-training rounds: round r > 1 relabels the self data with round r − 1's behaviour and finetunes M1 afresh (experiments/behavioral_training.py); cross is trained on the last round's behaviour."""


@dataclass(frozen=True)
class SeedsConfig(StudyConfig):
    seeds: int = 3
    """Finetune seeds per model: the study's seed and the next N − 1 (experiments/behavioral_replicates.py)."""


@dataclass(frozen=True)
class ScalingConfig(StudyConfig):
    fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    """Shares of the self data (per task × property) to train self and cross on (experiments/behavioral_replicates.py)."""


def check_names(models: Sequence[str], tasks: Sequence[str], properties: Sequence[str], finetune: str | None = None) -> None:
    """Every model (its files checked, not loaded), task (registered name or user `.jsonl` file),
    property and finetune preset named exists. Runs before the run folder is made: a typo must not
    leave a folder behind that then refuses the corrected command as "a different config"."""
    from introspect_mi.models import resolve
    from introspect_mi.properties import get_property
    from introspect_mi.tasks import get_task, read_user_tasks

    for spec in models:
        resolve(spec)
    for name in tasks:
        read_user_tasks(name) if name.endswith(".jsonl") else get_task(name)
    for name in properties:
        get_property(name)
    if finetune is not None:
        from introspect_mi.finetune_config import PRESETS

        if finetune not in PRESETS:
            raise UnknownName("finetune preset", finetune, list(PRESETS))
