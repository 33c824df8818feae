"""Planet-level folds of the labelled planets, drawn from the seed: the fit stage's out-of-fold label
calibration and K-fold cross-validation (`data.split.folds`, `spectramind cv`) deal them the same way.
"""

from __future__ import annotations

import numpy as np

from spectramind.errors import DataError

LABELLED = ("train", "val", "test")  # the manifest's splits that hold every labelled planet between them


def assign_folds(planet_ids, folds: int, seed: int) -> dict[int, int]:
    """Each distinct planet's fold (0..folds-1): a seeded permutation of the sorted planets dealt out in
    turn, so fold sizes differ by at most one and every visit of a planet lands in the planet's fold."""
    planets = np.unique(np.asarray(planet_ids))
    dealt = np.random.default_rng(seed).permutation(len(planets)) % folds
    return dict(zip(planets.tolist(), dealt.tolist(), strict=True))


def planet_splits(manifest: dict, held_out: tuple[int, int] | None) -> dict[str, list[int]]:
    """The store's planet splits. held_out None: the manifest's own, drawn when the store was calibrated.
    held_out (fold, folds): fold `fold` of every labelled planet is "test", the manifest's validation share
    of the labelled planets is drawn from the other folds as "val", and the rest is "train", so no
    store has to be calibrated again per fold. "predict" is always the raw folder's test/."""
    splits = manifest["splits"]
    if held_out is None:
        return splits
    fold, folds = held_out
    labelled = sorted(p for name in LABELLED for p in splits[name])
    if len(labelled) < folds:
        raise DataError(f"data.split.folds={folds}: the store has {len(labelled)} labelled planets, fewer than "
                        "one per fold")
    fold_of = assign_folds(labelled, folds, manifest["seed"])
    rest = [p for p in labelled if fold_of[p] != fold]
    n_val = round(manifest["fractions"]["val"] * len(labelled))
    # Seeded by the fold as well: each fold's training run validates on planets of its own.
    val = set(np.random.default_rng([manifest["seed"], fold]).permutation(rest)[:n_val].tolist())
    return {"train": [p for p in rest if p not in val], "val": sorted(val),
            "test": [p for p in labelled if fold_of[p] == fold], "predict": splits["predict"]}
