"""Linear probes on stored activations, with the controls that make their accuracy mean something.

API (numpy or torch in, numpy and pandas out; no model needed)::

    from probes import ProbeConfig, fit_probe, sweep, task_split
    probe = fit_probe(X_train, y_train, ProbeConfig(), groups=item_ids)   # C by grouped k-fold CV
    probe.predict(X_test); probe.predict_proba(X_test); probe.C
    table = sweep(load, layers, positions, {"second_character": label_fn},
                  split=lambda m: task_split(m["task"], TRAIN, HELD_OUT), cfg=ProbeConfig(),
                  control_key="object_answer")    # one tidy row per (layer, position, property)

Modules: `logistic` (the probe: standardized multinomial logistic regression, L2 strength by
cross-validation on training groups only, all folds × C's × label sets fitted as one batched
L-BFGS problem), `metrics` (accuracy + group bootstrap CI, balanced accuracy, majority-of-train
baseline), `controls`, `crossfit`, `nested`, `splits` (by task, by item; seeded), `sweep`, `config`.

Why the controls: a probe's accuracy alone does not say the representation *encodes* the
property. The majority baseline says what knowing only the label frequencies gives; the
shuffled-label control (same pipeline, permuted training labels) should sit at chance and
catches leakage between train and test; the control task (Hewitt & Liang, 2019: a random but
fixed label per input identity, e.g. per P's last word, `p_last_word`) measures how much the probe
could score by memorising identities. Where tasks are pooled, the per-task majority
(`crossfit.task_constant`) is the fair bar. `nested` chooses the layer in inner folds (an
unbiased accuracy), gives the max-over-layers permutation null, and Holm's adjustment. Selectivity = accuracy − control-task accuracy: a
property read out of the activations, not looked up from the answer's identity, has high
accuracy *and* high selectivity.
"""

from probes.config import ProbeConfig
from probes.controls import control_task_labels, selectivity, shuffled_labels
from probes.logistic import Probe, fit_probe, fit_probes
from probes.metrics import accuracy, accuracy_ci, balanced_accuracy, majority_baseline
from probes.splits import group_folds, group_split, task_split
from probes.sweep import COLUMNS, probe_cell, sweep

__all__ = [
    "COLUMNS", "Probe", "ProbeConfig", "accuracy", "accuracy_ci", "balanced_accuracy",
    "control_task_labels", "fit_probe", "fit_probes", "group_folds", "group_split",
    "majority_baseline", "probe_cell", "selectivity", "shuffled_labels", "sweep", "task_split",
]
