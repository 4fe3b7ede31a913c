"""Load labelled data from a built-in set, a local folder, a CSV file or the Hub, as ``datasets``.

Whatever the source, the result is a :class:`LabelledData`: a train and a validation
``datasets.Dataset`` with an integer ``label`` column, and the class names (text_regression: a float
``label`` column and the target's name). Corrupt image files in
local folders are skipped and counted at load time (never a crash mid-epoch). Reading image files
and the torch dataset that decodes them for training are in :mod:`hftl.images`.

Example:
    >>> from hftl.config import DataConfig
    >>> data = load_labelled_data(DataConfig(id="builtin:digits"), task="image_classification")
    >>> len(data.label_names)
    10
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# The built-in image sets (the digits; their two halves for a domain shift), re-exported as hftl.data.BUILTIN.
from hftl.builtin_images import BUILTIN, _digits  # noqa: F401
from hftl.config import DataConfig
from hftl.errors import DataError
from hftl.images import _image_folder, _verify_image
from hftl.label_sets import metadata_csv, multi_hot, multi_hot_labels, split_labels
from hftl.registry import get_task

logger = logging.getLogger(__name__)


@dataclass
class LabelledData:
    """Train and validation splits with integer labels, the class names, and what identifies them."""

    train: object  # datasets.Dataset
    validation: object
    label_names: list[str]
    source: str
    fingerprint: str
    skipped: dict = field(default_factory=dict)  # reason -> count, e.g. {"corrupt image": 2}
    regression: bool = False  # float labels; label_names then holds the one output's name
    carved: bool = False  # the validation split was held out by hftl from the training data (not given with it)
    origin: object = None  # a study's fold: a FoldOrigin (the study's pool and the fold's indices into it)

    def summary(self) -> str:
        skipped = f", skipped {self.skipped}" if self.skipped else ""
        target = f"target '{self.label_names[0]}'" if self.regression else f"{len(self.label_names)} classes"
        return (f"{self.source}: {len(self.train)} train / {len(self.validation)} validation examples, "
                f"{target}{skipped}")


def merged_for_refit(data: LabelledData) -> LabelledData:
    """``data`` with its validation examples added to its training ones (``train.refit``); the validation split
    stays as it was (the trainer still scores it each epoch, on examples it now trains on)."""
    import datasets

    train = datasets.concatenate_datasets([data.train, data.validation])
    origin = data.origin
    if origin is not None and "validation" in origin.indices:  # a study's rows: features computed once for the pool
        origin = FoldOrigin(origin.pool, {"train": [*origin.indices["train"], *origin.indices["validation"]],
                                          "validation": list(origin.indices["validation"])})
    return replace(data, train=train, fingerprint=f"{data.fingerprint}|refit", carved=False, origin=origin)


@dataclass
class FoldOrigin:
    """Where a study's fold comes from: the study's pool (a LabelledData) and each split's indices into it."""

    pool: LabelledData
    indices: dict  # split name ("train", "validation") -> pool indices, in the split's order


# ------------------------------------------------------------------------------------------ sources

def _csv_files(path: Path, cfg: DataConfig, column: str, readable, kind: str, multi_label: bool = False):
    """(paths, labels, names, unreadable count) from a CSV / JSON(-lines) file of paths (relative to it) and labels.

    ``multi_label``: each label cell is a set of labels (hftl.data.split_labels); labels are multi-hot rows.
    """
    import pandas as pd

    check_text_file(path)
    table = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_json(path, lines=path.suffix.lower() == ".jsonl")
    for name in (column, cfg.label_column):
        if name not in table.columns:
            raise DataError(
                f"Column '{name}' is not in '{path}'. Its columns are: {', '.join(map(str, table.columns))}. "
                f"Set data.{kind}_column / data.label_column."
            )
    paths, raw_labels, corrupt = [], [], 0
    for file, label in zip(table[column], table[cfg.label_column]):
        full = (path.parent / str(file)).resolve()
        if not full.is_file() or not readable(full):
            logger.warning("Skipping missing or unreadable %s file %s", kind, full)
            corrupt += 1
            continue
        paths.append(str(full))
        raw_labels.append(label)
    if not paths:
        raise DataError(f"'{path}' lists no readable {kind} files ({corrupt} missing or unreadable).")
    if multi_label:
        sets = [split_labels(v, cfg.label_separator) for v in raw_labels]
        names = sorted({n for labels in sets for n in labels})
        return paths, multi_hot(sets, names, cfg.label_column), names, corrupt
    _check_class_labels(raw_labels, cfg.label_column, path)
    names = sorted({str(v) for v in raw_labels})
    index = {n: i for i, n in enumerate(names)}
    return paths, [index[str(v)] for v in raw_labels], names, corrupt


def check_text_file(path: Path) -> None:
    """A data table must be non-empty UTF-8 text; checked in chunks, before a parser fails deep inside.

    Example:
        >>> check_text_file(Path("reviews.csv"))  # doctest: +SKIP
    """
    import codecs

    if not path.is_file():
        raise DataError(f"Data file '{path}' does not exist. Check data.id.")
    decoder = codecs.getincrementaldecoder("utf-8")()
    seen, text = 0, ""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                piece = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise DataError(f"Data file '{path}' is not UTF-8 text (byte {seen + e.start}); save it as UTF-8 "
                                "(e.g. iconv -f latin1 -t utf-8).") from e
            seen += len(chunk)
            text = text or piece.strip()
    if not text:
        raise DataError(f"Data file '{path}' is empty: it needs a header row and one row per example.")


def _check_class_labels(labels: list, column: str, path: Path) -> None:
    """Class labels must be present and be classes: an empty cell is not a class ``nan``, nor 0.37 a class."""
    missing = [i for i, v in enumerate(labels) if v is None or (isinstance(v, float) and np.isnan(v))
               or (isinstance(v, str) and not v.strip())]
    if missing:
        raise DataError(f"Label column '{column}' of '{path}' has {len(missing)} empty values (first at data row "
                        f"{missing[0] + 1}). Fill or drop those rows.")
    fractional = [v for v in labels if isinstance(v, float) and not float(v).is_integer()]
    if fractional:
        raise DataError(f"Label column '{column}' of '{path}' holds numbers such as {fractional[0]}, not classes: "
                        "classification needs class names or integers (for a number to predict, use a regression "
                        "task).")


DATA_FILE_SUFFIXES = {".parquet", ".arrow", ".csv", ".json", ".jsonl"}


def _is_class_folder(path: Path) -> bool:
    """A folder of class subfolders (audio clips), not a folder of data files that ``datasets`` reads by split."""
    if not path.is_dir():
        return False
    top = [p for p in path.iterdir() if not p.name.startswith(".")]
    data_dir = path / "data"
    return not any(p.suffix.lower() in DATA_FILE_SUFFIXES for p in top) and not (
        data_dir.is_dir() and any(p.suffix.lower() in DATA_FILE_SUFFIXES for p in data_dir.iterdir()))


def _file_fingerprint(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = Path(p).stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _encode_labels(ds, column: str, names: list[str] | None = None):
    """Map a label column to integers; returns (dataset with int 'label', names).

    ``names`` (the training split's classes) encodes another split with the same integers; a value
    outside them is an error, never a silently shifted class.
    """
    values, names = encode_class_values(ds, column, names)
    if column != "label" and "label" in ds.column_names:
        ds = ds.remove_columns("label")
    ds = ds.remove_columns(column).add_column("label", list(values))
    return ds, names


def encode_class_values(ds, column: str, names: list[str] | None = None) -> tuple[list[int], list[str]]:
    """A label column's class indices and class names (see ``_encode_labels``); the dataset is unchanged."""
    from datasets import ClassLabel

    feature = ds.features[column]
    values = ds[column]
    if isinstance(feature, ClassLabel):
        missing = sum(v is None or v < 0 for v in values)  # ClassLabel marks unlabelled rows with -1
        if missing:
            raise DataError(f"Label column '{column}' has {missing} missing values (-1). Drop or fill them first.")
        if names is not None:  # another split: match its classes to the training ones by name
            values = [feature.names[v] for v in values]
    else:
        missing = sum(v is None or (isinstance(v, float) and np.isnan(v)) for v in values)
        if missing:
            raise DataError(f"Label column '{column}' has {missing} missing values. Drop or fill them first.")
    if isinstance(feature, ClassLabel) and names is None:
        names = list(feature.names)
    else:
        names = names if names is not None else sorted({str(v) for v in values})
        index = {n: i for i, n in enumerate(names)}
        unseen = sorted({str(v) for v in values} - set(index))
        if unseen:
            raise DataError(
                f"Label column '{column}' holds {len(unseen)} value(s) the training split does not have: "
                f"{', '.join(unseen[:5])}. The training classes are {', '.join(names)}. Fix or drop those rows."
            )
        values = [index[str(v)] for v in values]
    return list(values), names


def _numeric_labels(ds, column: str):
    """Regression targets: the label column as floats in ``label``; returns (dataset, [column name]).

    A missing value or one that is not a number is an error naming the row, never a silent 0.
    """
    values = []
    for row, v in enumerate(ds[column]):
        try:
            value = float(v)
        except (TypeError, ValueError):
            value = None
        if value is None or not np.isfinite(value):
            what = "is missing" if v is None or (isinstance(v, float) and np.isnan(v)) else f"holds {v!r}"
            raise DataError(f"Label column '{column}' must hold numbers for text_regression; row {row} {what}. "
                            "Fix or drop that row.")
        values.append(value)
    if column != "label" and "label" in ds.column_names:
        ds = ds.remove_columns("label")
    return ds.remove_columns(column).add_column("label", values), [column]


def _labels_for(ds, column: str, regression: bool, names: list[str] | None = None, multi_label: str | None = None):
    """(dataset with a ``label`` column, names): class indices, float targets for regression, or multi-hot rows
    (``multi_label``: the label separator of a multi-label task)."""
    if multi_label is not None:
        return multi_hot_labels(ds, column, multi_label, names)
    return _numeric_labels(ds, column) if regression else _encode_labels(ds, column, names)


def _encoded_audio(ds, column: str):
    """The audio column as ``audio``, left encoded (hftl.audio decodes it with soundfile, not FFmpeg)."""
    import datasets

    ds = ds.select_columns([column, "label"])  # other Audio/Image columns would be decoded (needing FFmpeg) per row
    if isinstance(ds.features[column], datasets.Audio):
        ds = ds.cast_column(column, datasets.Audio(decode=False))
    return ds.rename_column(column, "audio") if column != "audio" else ds


def split_names(splits, cfg: DataConfig) -> str | None:
    """Check ``data.train_split`` (and ``data.validation_split``) exist; returns the validation split's name.

    Without ``data.validation_split``, a split named ``validation`` is used when there is one (else None:
    the caller holds out a share of train).
    """
    val_name = cfg.validation_split or ("validation" if "validation" in splits else None)
    for name in (cfg.train_split, val_name):
        if name is not None and name not in splits:
            raise DataError(f"Split '{name}' is not in '{cfg.id}'. Splits: {', '.join(splits)}.")
    return val_name


def _hub_dataset(cfg: DataConfig):
    import datasets

    try:
        return datasets.load_dataset(cfg.id, cfg.config_name, revision=cfg.revision)
    except FileNotFoundError as e:
        raise DataError(f"Dataset '{cfg.id}' was not found (as a local path or on the Hub): {e}") from e
    except (ConnectionError, OSError) as e:
        raise DataError(
            f"Dataset '{cfg.id}' is not cached and the Hub cannot be reached. Pass a local folder or CSV as "
            f"data.id, or set HF_ENDPOINT to a reachable mirror. ({type(e).__name__}: {e})"
        ) from e
    except Exception as e:  # datasets raises its own DatasetNotFoundError and friends
        raise DataError(f"Dataset '{cfg.id}' could not be loaded: {type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------------------------- splits

def stratified_split(labels: list, fraction: float, seed: int):
    """Seeded, stratified split of indices; a plain seeded split for tiny classes and real-valued labels."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    stratify = None
    if np.asarray(labels).dtype.kind in "iu":  # class indices (regression targets are floats)
        counts = np.bincount(labels)
        stratify = labels if counts[counts > 0].min() >= 2 else None
        classes = int((counts > 0).sum())
        held, n = math.ceil(fraction * len(labels)), len(labels)
        if stratify is not None and not classes <= held <= n - classes:
            fix = (f"Raise data.validation_fraction to at least {math.ceil(100 * classes / n) / 100:g}" if held < classes
                   else f"Lower data.validation_fraction to at most {math.floor(100 * (1 - classes / n)) / 100:g}")
            raise DataError(f"data.validation_fraction={fraction} holds out {held} of {n} examples, but a stratified "
                            f"split of {classes} classes needs at least {classes} on each side. {fix}, give a "
                            "validation split (data.validation_split), or label more examples.")
    if math.ceil(fraction * len(labels)) < 1 or math.ceil(fraction * len(labels)) >= len(labels):
        raise DataError(f"data.validation_fraction={fraction} of {len(labels)} examples leaves no validation or no "
                        "training example. Raise or lower it (e.g. 0.2).")
    train, val = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    return sorted(train.tolist()), sorted(val.tolist())


def _subsample(ds, n: int | None, seed: int):
    if n is None or n >= len(ds):
        return ds
    keep, _ = stratified_split(ds["label"], 1 - n / len(ds), seed)
    return ds.select(keep)


def _keep_classes(ds, names: list[str], keep: list) -> tuple:
    keep = [str(k) for k in keep]
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise DataError(f"data.classes names unknown classes {unknown}; the data has {names}.")
    old_to_new = {names.index(k): i for i, k in enumerate(keep)}
    ds = ds.filter(lambda ex: ex["label"] in old_to_new)
    ds = ds.map(lambda ex: {"label": old_to_new[ex["label"]]})
    return ds, keep


def load_labelled_data(cfg: DataConfig, task: str, seed: int = 42, whole: bool = False) -> LabelledData:
    """Load ``cfg.id`` for a classification (or text_regression) task and split it (see module docs for the sources).

    ``whole``: data to score, not to train on (``hftl eval`` on other data): the validation split is the
    source's own validation split when it has one, else every row; nothing is held out of it.
    """
    import datasets

    spec = get_task(task)  # what the data holds follows the task's modality, not its name
    regression, modality = spec.regression, spec.modality
    multi = cfg.label_separator if spec.multi_label else None  # multi-hot label rows (their separator in text cells)
    skipped: dict = {}
    validation = None
    source = cfg.id
    if cfg.id.startswith("builtin:"):
        name = cfg.id.split(":", 1)[1]
        if name not in BUILTIN:
            raise DataError(f"Unknown built-in data set '{name}'. Built-in sets: {', '.join(BUILTIN)}.")
        if multi is not None:
            raise DataError(f"The built-in set '{name}' has one label per image; {task} needs a CSV or folder whose "
                            "label column lists several (e.g. a metadata.csv with file_name and label columns).")
        images, labels, names = BUILTIN[name]()
        full = datasets.Dataset.from_dict(
            {"image": images, "label": labels},
            features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
        )
        fingerprint = f"builtin:{name}:v1"
    elif modality == "audio" and (Path(cfg.id).suffix.lower() in (".csv", ".json", ".jsonl")
                                             or _is_class_folder(Path(cfg.id))):
        from hftl.audio import audio_folder, is_readable_audio

        path = Path(cfg.id)
        if not path.exists():
            raise DataError(f"Data file '{path}' does not exist. Check data.id.")
        paths, labels, names, bad = _csv_files(path, cfg, cfg.audio_column, is_readable_audio, "audio") \
            if path.is_file() else audio_folder(path)
        if bad:
            skipped["unreadable or missing audio"] = bad
        full = datasets.Dataset.from_dict({"audio": paths, "label": labels},
                                          features=datasets.Features({"audio": datasets.Value("string"),
                                                                      "label": datasets.Value("int64")}))
        fingerprint = _file_fingerprint(paths)
    elif modality != "image" and Path(cfg.id).suffix.lower() in (".csv", ".jsonl", ".json", ".txt"):
        return _load_text_table(cfg, Path(cfg.id), seed, task, whole)
    elif Path(cfg.id).suffix.lower() == ".csv" or (modality == "image" and Path(cfg.id).is_dir()):
        path = Path(cfg.id)
        if path.suffix.lower() == ".csv" and not path.is_file():
            raise DataError(f"CSV file '{path}' does not exist. Check data.id.")
        if multi is not None and path.is_dir():  # Hugging Face imagefolder's layout: metadata.csv names each file's labels
            path, image_column = metadata_csv(path), "file_name" if cfg.image_column == "image" else cfg.image_column
        else:
            image_column = cfg.image_column
        paths, labels, names, corrupt = _csv_files(path, cfg, image_column, _verify_image, "image", multi is not None) \
            if path.is_file() else _image_folder(path)
        if corrupt:
            skipped["corrupt or missing image"] = corrupt
        label_type = datasets.Sequence(datasets.Value("float32")) if multi is not None else datasets.Value("int64")
        full = datasets.Dataset.from_dict(
            {"image": paths, "label": labels},
            features=datasets.Features({"image": datasets.Image(), "label": label_type}),
        )
        fingerprint = _file_fingerprint(paths)
    elif (cfg.id.startswith(("/", "./", "../", "~")) or cfg.id.endswith("/")) and not Path(cfg.id).expanduser().exists():
        raise DataError(f"Data folder or file '{cfg.id}' does not exist. Check data.id.")
    else:
        dsdict = _hub_dataset(cfg)  # also a local folder of data files (train.jsonl, validation.jsonl, ...)
        val_name = split_names(dsdict, cfg)
        full = dsdict[cfg.train_split]
        _check_columns(full, cfg, task)
        full, names = _labels_for(full, cfg.label_column, regression, multi_label=multi)
        if val_name:
            validation, _ = _labels_for(dsdict[val_name], cfg.label_column, regression, names, multi) \
                if cfg.label_column in dsdict[val_name].column_names else (None, None)
        fingerprint = f"hub:{cfg.id}@{cfg.revision}:{full._fingerprint}"
        if modality == "image" and cfg.image_column != "image":
            full = full.rename_column(cfg.image_column, "image")
            if validation is not None:
                validation = validation.rename_column(cfg.image_column, "image")
        if modality == "audio":
            full = _encoded_audio(full, cfg.audio_column)
            validation = _encoded_audio(validation, cfg.audio_column) if validation is not None else None
    return _finish(full, validation, names, cfg, seed, source, fingerprint, skipped, regression, whole)


def _finish(full, validation, names, cfg: DataConfig, seed, source, fingerprint, skipped,
            regression: bool = False, whole: bool = False) -> LabelledData:
    if regression and getattr(cfg, "classes", None):
        raise DataError("data.classes picks classes; text_regression has none. Remove data.classes.")
    if getattr(cfg, "classes", None):
        full, kept = _keep_classes(full, names, cfg.classes)
        if validation is not None:
            validation, _ = _keep_classes(validation, names, cfg.classes)
        names = kept
    carved = False
    if validation is None and whole:
        train, validation = full, full
    elif validation is None:
        train_idx, val_idx = stratified_split(full["label"], cfg.validation_fraction, seed)
        train, validation = full.select(train_idx), full.select(val_idx)
        carved = True
    else:
        train = full
    train = _subsample(train, cfg.max_train_samples, seed)
    validation = _subsample(validation, cfg.max_eval_samples, seed)
    if len(train) == 0:
        raise DataError(f"No training examples left in '{source}'.")
    key = hashlib.sha256(
        # The input and label columns belong in the key: cached probe features store the labels with them.
        f"{fingerprint}|{cfg.validation_fraction}|{cfg.max_train_samples}|{cfg.max_eval_samples}|{getattr(cfg, 'classes', None)}|{seed}"
        f"|{cfg.label_column}|{getattr(cfg, 'label_separator', '|')}|{regression}|{cfg.image_column}|{cfg.audio_column}|{cfg.text_column}|{cfg.text_pair_column}"
        f"{'|whole' if whole else ''}"
        .encode()).hexdigest()[:24]
    return LabelledData(train, validation, [str(n) for n in names], source, key, skipped, regression, carved)


def _check_columns(ds, cfg: DataConfig, task: str) -> None:
    needed = [cfg.label_column]
    modality = get_task(task).modality
    if modality == "image":
        needed.append(cfg.image_column)
    elif modality == "text":
        needed += [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    elif modality == "audio":
        needed.append(cfg.audio_column)
    for column in needed:
        if column not in ds.column_names:
            raise DataError(
                f"Column '{column}' is not in data '{cfg.id}'. Its columns are: {', '.join(ds.column_names)}. "
                "Set data.image_column / data.text_column / data.audio_column / data.label_column."
            )


def _load_text_table(cfg: DataConfig, path: Path, seed: int, task: str, whole: bool = False) -> LabelledData:
    """CSV or JSON-lines file of texts and labels (text classification) or targets (text regression)."""
    import datasets

    if not path.is_file():
        raise DataError(f"Data file '{path}' does not exist. Check data.id.")
    check_text_file(path)
    kind = "csv" if path.suffix.lower() == ".csv" else "json"
    full = datasets.load_dataset(kind, data_files=str(path), split="train")
    _check_columns(full, cfg, task)
    spec = get_task(task)
    regression = spec.regression
    full, names = _labels_for(full, cfg.label_column, regression,
                              multi_label=cfg.label_separator if spec.multi_label else None)
    fingerprint = _file_fingerprint([str(path)])
    return _finish(full, None, names, cfg, seed, str(path), fingerprint, {}, regression, whole)
