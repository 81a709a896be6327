"""The continual-learning protocol: which data updates the model, in how many sessions, and what measures retention.

Ding et al. (2022) update CLIP on one task either in one session (OST) or in several sessions over disjoint groups of
classes (MST), then measure the update task on the classes seen so far, zero-shot classification on other datasets,
and image-text retrieval. A `Protocol` holds those dataset specs and hands out the splits, loading each dataset once.

Every dataset it returns uses canonical column names, whatever the source calls them: `image`, and `label`
(classification) or `captions` (retrieval). Labels keep the update task's global ids; `sessions[t]` says which ids
session `t` holds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc

from .specs import DatasetSpec, check_keys, class_names_of, label_array, load_spec

__all__ = ["CLASS_ORDERS", "Protocol", "build_sessions"]

CLASS_ORDERS: tuple[str, ...] = ("seeded", "given")

logger = logging.getLogger(__name__)


def build_sessions(num_classes: int, num_sessions: int, seed: int, order: str = "seeded") -> list[list[int]]:
    """Split the class ids into disjoint sessions, in a seeded random order or in the dataset's own order.

    Args:
        num_classes (`int`): number of classes of the update task.
        num_sessions (`int`): number of sessions (1 = one-session training, OST; N > 1 = multi-session, MST).
        seed (`int`): seed of the class permutation (the same seed gives the same sessions on every machine); unused
            with `order="given"`.
        order (`str`, defaults to `"seeded"`): `"seeded"` permutes the ids with `seed`; `"given"` keeps them in label
            order, so session `t` holds consecutive ids. With COCO's 80 classes in 8 sessions that is the official
            `coco_process.py` phase, `category index // 10`; with EuroSAT's 10 in 5, `main_EuroSAT.py`'s `index // 2`.

    Returns:
        `list[list[int]]`: class ids per session. Sizes differ by at most one, the first sessions take the extra
        classes (10 classes in 3 sessions: 4, 3, 3). Within a session ids follow the order.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}: the update task has no "
                         "classes.")
    if not isinstance(num_sessions, (int, np.integer)) or num_sessions < 1:
        raise ValueError(f"num_sessions must be at least 1 (1 = one session, OST), got {num_sessions!r}.")
    if num_sessions > num_classes:
        raise ValueError(f"num_sessions={num_sessions} exceeds the {num_classes} classes of the update task; every "
                         f"session needs at least one class: set num_sessions to at most {num_classes}.")
    if order not in CLASS_ORDERS:
        raise ValueError(f"class_order must be one of {CLASS_ORDERS}, got {order!r}.")
    ids = (np.arange(int(num_classes)) if order == "given"
           else np.random.default_rng(seed).permutation(int(num_classes)))
    return [[int(c) for c in part] for part in np.array_split(ids, int(num_sessions))]


def _rename(dataset: datasets.Dataset, spec: DatasetSpec, task: str) -> datasets.Dataset:
    """Rename the spec's columns to `image` and `label`/`captions` (metadata only, no data is copied)."""
    wanted = {spec.image_column: "image"}
    wanted.update({spec.label_column: "label"} if task == "classification" else {spec.captions_column: "captions"})
    wanted = {old: new for old, new in wanted.items() if old != new}
    clash = [new for new in wanted.values() if new in dataset.column_names and new not in wanted]
    if clash:
        # A source column already holds the canonical name (a `label` next to `fine_label`): the spec chose another.
        logger.info("Dataset %r: dropping column(s) %s in favour of the spec's columns.", spec.name, clash)
        dataset = dataset.remove_columns(clash)
    return dataset.rename_columns(wanted) if wanted else dataset


def _key(spec: DatasetSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def _spec_list(value: Any, key: str) -> list[DatasetSpec]:
    if value is None:
        return []
    if isinstance(value, (DatasetSpec, Mapping)):
        raise TypeError(f"Protocol.{key} must be a list of dataset specs, got a single {type(value).__name__}; "
                        "wrap it in a list.")
    specs = [DatasetSpec.from_dict(v) for v in value]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Protocol.{key} has duplicate dataset names {duplicates}; names key the results.")
    return specs


@dataclass
class Protocol:
    """Datasets and sessions of one continual-learning experiment.

    Parameters of the update task:
        update_train (`DatasetSpec`): training split of the task CLIP is updated on (classification).
        update_test (`DatasetSpec`): its test split; must have the same classes.
        num_sessions (`int`, defaults to 1): 1 trains on all classes at once (OST); N > 1 splits the classes into N
            disjoint sessions trained one after the other (MST).
        class_order (`str`, defaults to `"seeded"`): `"seeded"` shuffles the classes with `class_order_seed` before
            cutting them into sessions; `"given"` keeps the dataset's label order (the paper's COCO phases).
        class_order_seed (`int`, defaults to 0): seed of the class order, hence of the session contents (`seeded`).

    Parameters of the retention measures:
        zero_shot (`list[DatasetSpec]`, defaults to `[]`): classification datasets evaluated zero-shot.
        retrieval (`list[DatasetSpec]`, defaults to `[]`): image-text retrieval datasets (a `captions` column).

    Parameters of rehearsal (`er`, `agem`, `gem`):
        replay (`DatasetSpec`, *optional*): the replay set: image-caption pairs (a `captions` column: one string or a
            list per image), or an image-label set (a label column and class names) whose labels the rehearsal
            methods turn into captions with the training prompt. See [`Protocol.replay_dataset`].

    Other parameters:
        cache_dir (`str`, *optional*): `datasets` cache for every split (default: `HF_DATASETS_CACHE`).

    Datasets are loaded on first use and kept; treat a protocol as frozen once it has been used.
    """

    update_train: DatasetSpec = field(metadata={"help": "Training split of the update task."})
    update_test: DatasetSpec = field(metadata={"help": "Test split of the update task."})
    num_sessions: int = field(default=1, metadata={"help": "1 = one-session training (OST), N = N sessions (MST)."})
    class_order_seed: int = field(default=0, metadata={"help": "Seed of the class order split into sessions."})
    class_order: str = field(default="seeded", metadata={
        "help": "'seeded': classes shuffled with class_order_seed; 'given': the dataset's label order."})
    zero_shot: list[DatasetSpec] = field(default_factory=list, metadata={"help": "Zero-shot classification sets."})
    retrieval: list[DatasetSpec] = field(default_factory=list, metadata={"help": "Image-text retrieval sets."})
    replay: DatasetSpec | None = field(default=None, metadata={
        "help": "Replay set of the rehearsal methods: image-caption pairs, or image-label data (captioned with the "
                "training prompt)."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory."})
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.update_train = DatasetSpec.from_dict(self.update_train)
        self.update_test = DatasetSpec.from_dict(self.update_test)
        self.zero_shot = _spec_list(self.zero_shot, "zero_shot")
        self.retrieval = _spec_list(self.retrieval, "retrieval")
        if self.replay is not None:
            self.replay = DatasetSpec.from_dict(self.replay)
        if not isinstance(self.num_sessions, int) or self.num_sessions < 1:
            raise ValueError(f"Protocol.num_sessions must be a positive integer, got {self.num_sessions!r}.")
        if self.class_order not in CLASS_ORDERS:
            raise ValueError(f"Protocol.class_order must be one of {CLASS_ORDERS}, got {self.class_order!r}.")

    @classmethod
    def from_dict(cls, d: Protocol | Mapping[str, Any]) -> Protocol:
        """Build a protocol from a recipe dict whose specs are plain dicts (or return an existing protocol).

        Args:
            d (`Protocol` or `Mapping`): the protocol, or a dict of its fields.

        Returns:
            `Protocol`: the protocol. Unknown keys raise a `ValueError` with the closest valid key.
        """
        if isinstance(d, Protocol):
            return d
        if not isinstance(d, Mapping):
            raise TypeError(f"A protocol must be a dict or a Protocol, got {type(d).__name__}.")
        check_keys("Protocol", d.keys(), [f.name for f in fields(cls) if f.init])
        missing = [k for k in ("update_train", "update_test") if k not in d]
        if missing:
            raise ValueError(f"Protocol is missing required key(s) {missing}.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The protocol as plain dicts (the inverse of [`Protocol.from_dict`])."""
        return {
            "update_train": self.update_train.to_dict(),
            "update_test": self.update_test.to_dict(),
            "num_sessions": self.num_sessions,
            "class_order_seed": self.class_order_seed,
            "class_order": self.class_order,
            "zero_shot": [s.to_dict() for s in self.zero_shot],
            "retrieval": [s.to_dict() for s in self.retrieval],
            "replay": None if self.replay is None else self.replay.to_dict(),
            "cache_dir": self.cache_dir,
        }

    # ---------------------------------------------------------------------------------------------------------------
    # Loading (each split once)

    def _classification(self, spec: DatasetSpec) -> tuple[datasets.Dataset, list[str]]:
        key = f"classification/{_key(spec)}"
        if key not in self._cache:
            dataset = load_spec(spec, task="classification", cache_dir=self.cache_dir)
            names = class_names_of(dataset, spec)
            self._cache[key] = (_rename(dataset, spec, "classification"), names)
        return self._cache[key]

    def _train(self) -> datasets.Dataset:
        return self._classification(self.update_train)[0]

    def _test(self) -> datasets.Dataset:
        return self._classification(self.update_test)[0]

    def _labels(self, which: str) -> np.ndarray:
        key = f"labels/{which}"
        if key not in self._cache:
            self._cache[key] = label_array(self._train() if which == "train" else self._test(), "label")
        return self._cache[key]

    @property
    def class_names(self) -> list[str]:
        """Class names of the update task, in label-id order (from the train split; the test split must agree)."""
        if "class_names" not in self._cache:
            train_names = self._classification(self.update_train)[1]
            test_names = self._classification(self.update_test)[1]
            if train_names != test_names:
                raise ValueError(
                    f"The update task's train and test splits name their classes differently: {train_names} vs "
                    f"{test_names}. Labels must mean the same class in both; set the same class_names on both specs."
                )
            self._cache["class_names"] = train_names
        return self._cache["class_names"]

    @property
    def sessions(self) -> list[list[int]]:
        """Label ids of each session (0-based). Raises if a session has no training rows, before any training."""
        if "sessions" not in self._cache:
            sessions = build_sessions(len(self.class_names), self.num_sessions, self.class_order_seed,
                                      self.class_order)
            train_counts = np.bincount(self._labels("train"), minlength=len(self.class_names))
            test_counts = np.bincount(self._labels("test"), minlength=len(self.class_names))
            for t, ids in enumerate(sessions):
                if train_counts[ids].sum() == 0:
                    raise ValueError(
                        f"Session {t} (classes {[self.class_names[i] for i in ids]}) has no training rows in "
                        f"{self.update_train.name!r}. Raise max_samples, use fewer sessions, or check the labels."
                    )
                if test_counts[ids].sum() == 0:
                    logger.warning("Session %d has no test rows in %r: its accuracy cannot be measured.", t,
                                   self.update_test.name)
            missing = [self.class_names[i] for i in np.flatnonzero(train_counts == 0)]
            if missing:
                logger.warning("Classes without training rows in %r: %s.", self.update_train.name, missing)
            self._cache["sessions"] = sessions
        return self._cache["sessions"]

    def _check_session(self, t: int) -> None:
        if not isinstance(t, (int, np.integer)) or not 0 <= t < self.num_sessions:
            raise IndexError(f"Session index {t!r} is out of range: the protocol has {self.num_sessions} session(s), "
                             f"indexed 0 to {self.num_sessions - 1}.")

    def _seen(self, t: int) -> list[int]:
        self._check_session(t)
        return [c for s in self.sessions[: t + 1] for c in s]

    def _rows(self, which: str, classes: list[int]) -> datasets.Dataset:
        dataset = self._train() if which == "train" else self._test()
        # Selecting indices computed from the label column never decodes (or even reads) an image.
        keep = np.flatnonzero(np.isin(self._labels(which), classes))
        return dataset.select(keep)

    def session_class_names(self, t: int) -> list[str]:
        """Names of the classes of session `t` (0-based), in session order."""
        self._check_session(t)
        return [self.class_names[i] for i in self.sessions[t]]

    def session_train(self, t: int) -> datasets.Dataset:
        """Training rows of session `t` (0-based): the rows whose label is one of that session's classes."""
        self._check_session(t)
        return self._rows("train", self.sessions[t])

    def joint_train(self, t: int) -> datasets.Dataset:
        """Training rows of sessions `0..t` together (the joint-training upper bound)."""
        return self._rows("train", self._seen(t))

    def session_train_indices(self, t: int) -> np.ndarray:
        """Row indices, in the update-train split, of session `t`'s training rows (what exemplar memories store)."""
        self._check_session(t)
        return np.flatnonzero(np.isin(self._labels("train"), self.sessions[t]))

    def train_rows(self, indices) -> datasets.Dataset:
        """The update-train rows at `indices` (as returned by [`session_train_indices`])."""
        return self._train().select(np.asarray(indices, dtype=np.int64))

    def replay_dataset(self) -> tuple[datasets.Dataset, list[str] | None] | None:
        """The replay set, or None when the protocol has none.

        Returns:
            `(dataset, class_names)`: image-caption pairs come with an `image` and a `captions` column and
            `class_names=None`; an image-label set comes with `image` and `label` columns and its class names (the
            rehearsal methods caption each image with the training prompt of its class). A spec whose data has
            neither column, or no rows, is an error that names the fix.
        """
        if self.replay is None:
            return None
        key = f"replay/{_key(self.replay)}"
        if key not in self._cache:
            spec = self.replay
            dataset = load_spec(spec)
            if spec.captions_column in dataset.column_names:
                value = (_rename(dataset, spec, "retrieval"), None)
            elif spec.label_column in dataset.column_names:
                dataset, names = self._classification(spec)
                value = (dataset, names)
            else:
                from ..rehearsal import RehearsalError

                raise RehearsalError(
                    f"replay_dataset {spec.name!r} has no captions column {spec.captions_column!r} and no label "
                    f"column {spec.label_column!r} (columns: {dataset.column_names}); set captions_column to its "
                    "captions (image-caption pairs), or label_column (and class_names) to caption it with the "
                    "training prompt.")
            if len(value[0]) == 0:
                from ..rehearsal import RehearsalError

                raise RehearsalError(f"replay_dataset {spec.name!r} (split {spec.split!r}) has no rows; point it at a "
                                     "non-empty split or remove replay_dataset.")
            self._cache[key] = value
        return self._cache[key]

    def seen_test(self, t: int) -> datasets.Dataset:
        """Test rows of the classes seen up to session `t` (inclusive)."""
        return self._rows("test", self._seen(t))

    def update_test_dataset(self) -> datasets.Dataset:
        """The whole test split of the update task."""
        return self._test()

    def zero_shot_datasets(self) -> dict[str, tuple[datasets.Dataset, list[str]]]:
        """Zero-shot sets by name: `(dataset with image/label columns, class names)`."""
        return {spec.name: self._classification(spec) for spec in self.zero_shot}

    def retrieval_datasets(self) -> dict[str, datasets.Dataset]:
        """Retrieval sets by name, with `image` and `captions` columns."""
        out = {}
        for spec in self.retrieval:
            key = f"retrieval/{_key(spec)}"
            if key not in self._cache:
                dataset = load_spec(spec, task="retrieval", cache_dir=self.cache_dir)
                self._cache[key] = _rename(dataset, spec, "retrieval")
            out[spec.name] = self._cache[key]
        return out

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable record of the splits, for `results.json`: specs, row counts, class order, sessions.

        Loads every dataset of the protocol (once), so it also checks the whole configuration before training.
        """
        names = self.class_names
        train_counts = np.bincount(self._labels("train"), minlength=len(names))
        test_counts = np.bincount(self._labels("test"), minlength=len(names))
        sessions = [{
            "session": t,
            "class_ids": list(ids),
            "class_names": [names[i] for i in ids],
            "train_rows": int(train_counts[ids].sum()),
            "test_rows": int(test_counts[ids].sum()),
        } for t, ids in enumerate(self.sessions)]
        retrieval = []
        for spec, dataset in zip(self.retrieval, self.retrieval_datasets().values()):
            captions = (dataset.select_columns(["captions"]).with_format("arrow")[:]["captions"] if len(dataset)
                        else None)
            num_captions = 0 if captions is None else (
                int(pc.sum(pc.list_value_length(captions)).as_py() or 0)
                if str(captions.type).startswith(("list", "large_list", "fixed_size_list")) else len(dataset))
            retrieval.append({**spec.to_dict(), "num_rows": len(dataset), "num_captions": num_captions})
        out = {
            "update_task": {
                "train": {**self.update_train.to_dict(), "num_rows": len(self._train())},
                "test": {**self.update_test.to_dict(), "num_rows": len(self._test())},
                "class_names": list(names),
            },
            "setting": "OST" if self.num_sessions == 1 else "MST",
            "num_sessions": self.num_sessions,
            "class_order_seed": self.class_order_seed,
            "class_order_rule": self.class_order,
            "class_order": [names[i] for s in self.sessions for i in s],
            "sessions": sessions,
            "zero_shot": [{**spec.to_dict(), "num_rows": len(ds), "class_names": list(cn)}
                          for spec, (ds, cn) in zip(self.zero_shot, self.zero_shot_datasets().values())],
            "retrieval": retrieval,
        }
        if self.replay is not None:
            replay, replay_names = self.replay_dataset()
            out["replay"] = {**self.replay.to_dict(), "num_rows": len(replay),
                             "pairs": "captions" if replay_names is None else "class prompts"}
        return out
