"""Audio in: decode, mix to mono, resample, crop, and batch clips for an audio model.

Files are decoded with ``soundfile`` (libsndfile: WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...) and
resampled with a polyphase filter (scipy) to the rate the model's feature extractor expects, so
a folder may mix rates and channel counts. Hub datasets with an ``Audio`` column are read as
encoded bytes (``Audio(decode=False)``) and decoded the same way: no FFmpeg needed.

Clips longer than ``data.max_duration`` seconds are cropped: a random window in training (drawn
from (seed, epoch, index), so resumed runs and workers see the same crops), the start in
evaluation. Clips shorter than the model's smallest input are padded with silence.

Example:
    >>> wave = read_audio("dog_bark.wav", sampling_rate=16000)  # doctest: +SKIP
    >>> wave.dtype, wave.ndim  # doctest: +SKIP
    (dtype('float32'), 1)
"""

from __future__ import annotations

import io
import logging
import random
from math import gcd
from pathlib import Path

import numpy as np
import torch

from hftl.errors import DataError

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".opus"}
MIN_SAMPLES = 800  # 50 ms at 16 kHz: wav2vec2's convolutions need 400 samples for one frame


def read_audio(source, sampling_rate: int, max_seconds: float | None = None, rng: random.Random | None = None,
               name: str | None = None) -> np.ndarray:
    """Decode a file path or encoded bytes to a mono float32 waveform at ``sampling_rate``.

    With ``max_seconds``, only a window that long is read (from the start, or at an offset drawn
    from ``rng``): a long recording costs its window, not the whole file.

    Example:
        >>> read_audio("clip.flac", 16000).shape  # doctest: +SKIP
        (24000,)
    """
    import soundfile as sf

    is_bytes = isinstance(source, (bytes, bytearray))
    name = name or ("audio bytes" if is_bytes else f"'{source}'")
    if source is None or isinstance(source, dict):
        raise DataError(f"{name}: expected a file path or encoded audio bytes, got {type(source).__name__}.")
    try:
        with sf.SoundFile(io.BytesIO(source) if is_bytes else str(source)) as f:
            rate, frames = f.samplerate, f.frames
            window = frames if max_seconds is None else min(frames, max(1, int(max_seconds * rate)))
            start = rng.randrange(frames - window + 1) if rng is not None and frames > window else 0
            f.seek(start)
            data = f.read(window, dtype="float32", always_2d=True)
    except FileNotFoundError as e:
        raise DataError(f"Audio file '{source}' does not exist.") from e
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError on bad data
        if not is_bytes and not Path(str(source)).exists():
            raise DataError(f"Audio file '{source}' does not exist.") from e
        raise DataError(f"{name} could not be decoded as audio: {e}") from e
    wave = data.mean(axis=1)  # mono: the models take one channel
    if rate != sampling_rate:
        from scipy.signal import resample_poly

        g = gcd(int(rate), int(sampling_rate))
        wave = resample_poly(wave, sampling_rate // g, int(rate) // g).astype(np.float32)
    if not np.isfinite(wave).all():
        raise DataError(f"{name} decodes to NaN/inf samples.")
    return np.ascontiguousarray(wave, dtype=np.float32)


def fit_length(wave: np.ndarray, max_samples: int, start: int = 0) -> np.ndarray:
    """Crop to ``max_samples`` from ``start``; pad with silence to the models' smallest input."""
    wave = wave[start:start + max_samples]
    return np.pad(wave, (0, MIN_SAMPLES - len(wave))) if len(wave) < MIN_SAMPLES else wave


def is_readable_audio(path: Path) -> bool:
    """Whether a file decodes in full (a header check misses truncated data)."""
    import soundfile as sf

    try:  # block by block: a 60-minute recording is checked in constant memory, not decoded whole
        with sf.SoundFile(str(path)) as f:
            if f.frames <= 0:
                return False
            read = 0
            for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    logger.warning("%s holds NaN/inf samples", path)
                    return False
                read += len(block)
            return read > 0
    except Exception:
        return False


def audio_folder(root: Path) -> tuple[list[str], list[int], list[str], int]:
    """(paths, labels, class names, unreadable count) of a folder with one subfolder of clips per class."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"Audio folder '{root}' has no class subfolders. Expected one subfolder per class: "
                        f"{root}/<class_name>/<audio files>.")
    paths, labels, bad = [], [], 0
    for index, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            if not is_readable_audio(path):
                logger.warning("Skipping unreadable audio file %s", path)
                bad += 1
                continue
            paths.append(str(path))
            labels.append(index)
    if not paths:
        raise DataError(f"Audio folder '{root}' holds no readable audio ({bad} unreadable) in its class subfolders "
                        f"({', '.join(classes)}). Supported extensions: {', '.join(sorted(AUDIO_EXTENSIONS))}.")
    return paths, labels, classes, bad


def audio_source(value):
    """What ``read_audio`` takes, from a dataset cell: a path string, or an ``Audio(decode=False)`` dict."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def longest_clip_seconds(data) -> float | None:
    """The longest clip of the training and validation splits, from the files' headers; None if one is unreadable
    (the datasets then name it) or the data has no audio column."""
    import soundfile as sf

    longest = 0.0
    for split in {id(s): s for s in (data.train, data.validation) if s is not None}.values():
        if "audio" not in getattr(split, "column_names", ()):
            return None
        for row in split.select_columns(["audio"]):  # row by row: a Hub dataset's clips are bytes
            source = audio_source(row["audio"])
            try:
                info = sf.info(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source))
            except Exception:  # noqa: BLE001 - any unreadable clip: the dataset reports it with its name
                return None
            longest = max(longest, info.frames / info.samplerate)
    return longest or None


class AudioDataset(torch.utils.data.Dataset):
    """Clips from a ``datasets.Dataset`` (``audio`` and ``label`` columns) as model-ready batches.

    ``collate`` runs the model's feature extractor over a batch of waveforms (hftl.methods.feature_cache uses it
    for cached probes too). ``random`` crops long training clips at a seeded random offset.
    """

    def __init__(self, hf_dataset, model, max_duration: float, seed: int = 0, random: bool = False):
        self.ds = hf_dataset
        self.model = model
        self.max_samples = max(MIN_SAMPLES, int(max_duration * model.sampling_rate))
        self.seed, self.random, self.epoch = seed, random, 0

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def without_augmentation(self) -> AudioDataset:
        """The same clips, cropped at the start (what a feature cache may store)."""
        return AudioDataset(self.ds, self.model, self.max_samples / self.model.sampling_rate, self.seed, random=False)

    def waveform(self, row: dict, index: int) -> np.ndarray:
        # Only the clip's window is decoded: from the start, or (training) at an offset from (seed, epoch, index).
        rng = random.Random(hash((self.seed, self.epoch, int(index)))) if self.random else None
        source = audio_source(row["audio"])
        name = f"Example {index}" + (f" ('{source}')" if isinstance(source, str) else "")
        wave = read_audio(source, self.model.sampling_rate,
                          max_seconds=self.max_samples / self.model.sampling_rate, rng=rng, name=name)
        return fit_length(wave, self.max_samples)

    def __getitem__(self, index: int) -> dict:
        row = self.ds[int(index)]
        return {"audio": self.waveform(row, index), "labels": row["label"]}

    def collate(self, examples: list[dict]) -> dict:
        batch = self.model.encode_audio([e["audio"] for e in examples])
        labels = [e["labels"] for e in examples]
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
        return batch


def build_audio_datasets(cfg, model, data):
    """(train, validation, collate) for audio classification: decoded, resampled, cropped, featurized per batch.

    Example:
        >>> train_ds, eval_ds, collate = build_audio_datasets(cfg, model, data)  # doctest: +SKIP
        >>> collate([train_ds[0]])["input_values"].shape  # doctest: +SKIP
        torch.Size([1, 16000])
    """
    dc = cfg.data
    if dc.max_duration <= 0:
        raise DataError("data.max_duration must be a positive number of seconds.")
    if "audio" not in data.train.column_names:
        raise DataError(f"'{data.source}' holds no audio (columns: {', '.join(data.train.column_names)}). Give "
                        "audio_classification a folder of clips per class, a CSV of paths, or a dataset with an "
                        "Audio column (data.audio_column).")
    model.max_duration = dc.max_duration
    train = AudioDataset(data.train, model, dc.max_duration, cfg.train.seed, random=dc.augment)
    validation = AudioDataset(data.validation, model, dc.max_duration, cfg.train.seed, random=False)
    return train, validation, train.collate
