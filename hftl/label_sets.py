"""Multi-label targets: each example's set of labels, read from a cell, as a row of 0/1 floats.

What ``image_multilabel`` and ``text_multilabel`` read (hftl.data calls these): a JSON list or a
Hub ``Sequence`` column, text joined by ``data.label_separator``, or an image folder's
``metadata.csv`` (Hugging Face imagefolder's layout). An empty cell is an example with none of the
labels; a label the training split does not have is an error naming it.

Example:
    >>> multi_hot([split_labels("cat|dog"), []], ["cat", "dog", "sky"], "label")
    [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hftl.errors import DataError


def split_labels(value, separator: str = "|") -> list[str]:
    """One example's labels from a cell: a list (JSON, a Hub Sequence column), or text joined by ``separator``.

    An empty cell (or list) is an example with none of the labels, which multi-label data may hold.

    Example:
        >>> split_labels("cat|dog"), split_labels(["sky"]), split_labels(None)
        (['cat', 'dog'], ['sky'], [])
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return sorted({str(v).strip() for v in value if str(v).strip()})
    return sorted({part.strip() for part in str(value).split(separator) if part.strip()})


def multi_hot(sets: list[list[str]], names: list[str], column: str) -> list[list[float]]:
    """Rows of 0/1 floats, one column per name; a label outside ``names`` is an error naming it."""
    index = {n: i for i, n in enumerate(names)}
    unseen = sorted({n for labels in sets for n in labels} - set(index))
    if unseen:
        raise DataError(f"Label column '{column}' holds {len(unseen)} label(s) the training split does not have: "
                        f"{', '.join(unseen[:5])}. The training labels are {', '.join(names)}. Fix or drop those rows.")
    rows = []
    for labels in sets:
        row = [0.0] * len(names)
        for n in labels:
            row[index[n]] = 1.0
        rows.append(row)
    return rows


def multi_hot_labels(ds, column: str, separator: str, names: list[str] | None = None):
    """Multi-label targets: the label column as multi-hot float rows in ``label``; returns (dataset, names)."""
    sets = [split_labels(v, separator) for v in ds[column]]
    names = names if names is not None else sorted({n for labels in sets for n in labels})
    if not names:
        raise DataError(f"Label column '{column}' holds no labels at all; multi-label data needs at least one.")
    rows = multi_hot(sets, names, column)
    if column != "label" and "label" in ds.column_names:
        ds = ds.remove_columns("label")
    return ds.remove_columns(column).add_column("label", rows), names


def metadata_csv(folder: Path) -> Path:
    """A multi-label image folder's ``metadata.csv`` (file_name and label columns), or one clear error."""
    meta = folder / "metadata.csv"
    if not meta.is_file():
        raise DataError(f"'{folder}' has no metadata.csv. A multi-label image folder lists each image's labels there "
                        "(Hugging Face imagefolder's layout): columns file_name and label, e.g. 'cat.png,cat|sofa'.")
    return meta
