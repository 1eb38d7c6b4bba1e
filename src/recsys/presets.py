"""The models of notebook 02's ranking table, their settings, and the rules that scale them with the data.

``PRESETS`` name a model and the settings that notebook 02's validation protocol (:mod:`recsys.selection`)
chose on the October sample; ``recsys train --preset NAME``, the SageMaker hyperparameter ``preset`` and
notebook 02 all train them through :func:`preset_settings`.

Two rules make one preset fit any size of data (``scale_epochs`` and ``scale_batch``; the ``seed`` preset
is the workshop's model and keeps its 3 epochs and batch of 1,024 whatever the size, and epochs a user
gives explicitly, ``recsys train --epochs`` or the hyperparameter ``epochs``, are used as given):

* **epochs** (:func:`scaled_epochs`): a preset's epochs were chosen on at most
  :data:`REFERENCE_EXAMPLES` training examples (the validation sample is bounded by the same number).
  Up to that many examples they are used as they are; above it, the *number of examples processed*
  stays what the choice was, ``epochs x REFERENCE_EXAMPLES``, with at least one full epoch::

      epochs(n) = epochs                                        if n <= REFERENCE_EXAMPLES
                = max(1, ceil(epochs * REFERENCE_EXAMPLES / n))   otherwise

  300 epochs on a 3k-pair sample and 1 epoch on 60M pairs are the same order of updates for the item
  tables (per-user tables get fewer passes on bigger data: they are bounded by the time budget, not
  by this rule).
* **batch size** (:func:`scaled_batch`): an epoch keeps at least :data:`MIN_STEPS_PER_EPOCH` steps at
  the preset's batch size; above that the batch grows to keep that many steps, as a power of two, up
  to :data:`MAX_BATCH` (a step costs about the same up to there, so the rate in examples per second
  grows with it)::

      batch(n) = clamp(2 ** floor(log2(n / MIN_STEPS_PER_EPOCH)), preset batch, MAX_BATCH)

Both leave the October and cosmetics samples (under 10k examples) exactly as the presets say.

Imported by the SageMaker training container (Python 3.8): standard library only.
"""

from __future__ import annotations

import math

#: Training examples up to which a preset's epochs are used as they are (and the validation sample's bound).
REFERENCE_EXAMPLES = 20_000
MIN_STEPS_PER_EPOCH = 64
MAX_BATCH = 2048

#: ``kind`` picks the training function; the rest are its keyword arguments.
PRESETS = {
    "seed": {"kind": "mf", "objective": "event_score"},
    "implicit": {"kind": "mf", "objective": "implicit", "epochs": 300, "num_embeddings": 32, "batch_size": 64,
                 "lr": 0.2, "momentum": 0.0, "wd": 0.005, "dropout": 0.0, "init_magnitude": 10.0,
                 "embedding_grad": "sum", "scale_epochs": True, "scale_batch": True},
    "side": {"kind": "side", "epochs": 40, "num_embeddings": 32, "wd": 1e-4, "negatives": 8, "lr": 0.01,
             "scale_epochs": True, "scale_batch": True},
    "sequence": {"kind": "sequence", "epochs": 6, "scale_epochs": True, "scale_batch": True},
}
PRESETS["best"] = PRESETS["sequence"]
#: What each preset is, in one line (the command line's help, the notebooks' labels).
DESCRIPTIONS = {
    "seed": "the workshop's MFBlock and hyperparameters (L2 loss on the event score)",
    "implicit": "MFBlock trained for ranking (BPR, sampled negatives)",
    "side": "SideMFBlock: history and attributes (BPR, 8 negatives, Adam)",
    "sequence": "SequenceMFBlock: the last events through attention and learned transitions, tied item parts "
                "(item, category, brand, price), sampled softmax",
}
DESCRIPTIONS["best"] = "the best kit model by validation: " + DESCRIPTIONS["sequence"]


def names() -> tuple:
    return tuple(sorted(PRESETS))


def kind(name: str) -> str:
    check(name)
    return PRESETS[name]["kind"]


def check(name: str) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(names())}")
    return name


def preset_settings(name: str, **overrides) -> dict:
    """The preset's training settings (without its ``kind``), with ``overrides``."""
    check(name)
    return {**{k: v for k, v in PRESETS[name].items() if k != "kind"}, **overrides}


def scaled_epochs(epochs: int, n_examples: int, reference: int = REFERENCE_EXAMPLES) -> int:
    """The epochs rule (module doc): ``epochs`` as they are up to ``reference`` examples, else the same
    number of examples processed, at least one epoch."""
    if epochs <= 0 or n_examples <= reference:
        return int(epochs)
    return max(1, math.ceil(epochs * reference / n_examples))


def scaled_batch(batch_size: int, n_examples: int) -> int:
    """The batch rule (module doc): at least :data:`MIN_STEPS_PER_EPOCH` steps per epoch, up to :data:`MAX_BATCH`."""
    if n_examples < MIN_STEPS_PER_EPOCH * batch_size:
        return int(batch_size)
    grown = 2 ** int(math.floor(math.log2(n_examples / MIN_STEPS_PER_EPOCH)))
    return int(max(batch_size, min(MAX_BATCH, grown)))


def describe_rules() -> str:
    """The two rules in words, with their numbers (for the notebooks)."""
    return (f"epochs: as chosen up to {REFERENCE_EXAMPLES:,} training examples; above, max(1, ceil(epochs x "
            f"{REFERENCE_EXAMPLES:,} / examples)), the same number of examples processed. batch: the preset's "
            f"while an epoch has at least {MIN_STEPS_PER_EPOCH} steps of it; above, the power of two that keeps "
            f"{MIN_STEPS_PER_EPOCH} steps, up to {MAX_BATCH:,}.")


def schedule(epochs: int, batch_size: int, n_examples: int, scale_epochs: bool = False,
             scale_batch: bool = False) -> tuple:
    """``(epochs, batch_size)`` to train ``n_examples`` with, each rule applied when asked."""
    return (scaled_epochs(epochs, n_examples) if scale_epochs else int(epochs),
            scaled_batch(batch_size, n_examples) if scale_batch else int(batch_size))


def user_settings(name: str, epochs=None, **overrides) -> dict:
    """The preset's settings for a user's run: explicit ``epochs`` are used as given (not scaled)."""
    if epochs is not None:
        overrides.update(epochs=epochs, scale_epochs=False)
    return preset_settings(name, **overrides)
