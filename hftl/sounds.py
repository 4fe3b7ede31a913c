"""Synthetic sounds, offline: the audio and the pictures of the audio-to-visual study (issue 13, item 4).

hftl ships no audio data set, and the study must run with no network, so its audio is made here
from seeded random parameters, each class a kind of time-frequency pattern:

- :data:`SOURCE_SOUNDS`, what the audio model learns to tell apart (a tiny Audio Spectrogram
  Transformer, ``audio_classification``): steady low and high tones, rising and falling chirps, a
  warble (vibrato) and pulses;
- :data:`PICTURE_SOUNDS`, other patterns, never heard by the audio model, drawn as *pictures*: a
  chord, a rise then fall, a fall then rise, three rising steps, a click train. The picture is
  the AST's own front end (Kaldi log-mel filter bank, its normalisation) laid out as the AST
  patches it, frequency down the rows (row 0: the lowest mel band) and time across the columns,
  8-bit gray; a timm ViT with mean = std = 0.5 then reads the very numbers the AST read.

So the study's visual task is one where an audio model's weights could plausibly help (the pictures
are spectrograms), and the visual source (a ViT trained on the built-in digits) is a fair rival.
:func:`write_study_inputs` writes everything the study YAML names.

Example:
    >>> paths = write_study_inputs("outputs/audio_to_visual/inputs")  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['ast', 'pictures', 'sounds']
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

RATE = 16000
MEL_BINS = 32  # the picture's rows
FRAMES = 32  # the picture's columns: 10 ms hops of 25 ms windows
SECONDS = (400 + (FRAMES - 1) * 160) / RATE  # exactly FRAMES Kaldi frames (0.335 s)


def _tone(freq: np.ndarray) -> np.ndarray:
    """A sine whose instantaneous frequency (Hz, one value per sample) is ``freq``."""
    return np.sin(2 * np.pi * np.cumsum(freq) / RATE)


def _glide(rng, n: int, lo: tuple[float, float], hi: tuple[float, float]) -> np.ndarray:
    """A geometric sweep from a frequency drawn in ``lo`` to one drawn in ``hi`` over ``n`` samples."""
    return np.geomspace(rng.uniform(*lo), rng.uniform(*hi), n)


def _steady_low(rng, n):
    return _tone(np.full(n, rng.uniform(200, 600)))


def _steady_high(rng, n):
    return _tone(np.full(n, rng.uniform(1500, 5000)))


def _rising(rng, n):
    return _tone(_glide(rng, n, (200, 800), (2000, 6000)))


def _falling(rng, n):
    return _tone(_glide(rng, n, (2000, 6000), (200, 800)))


def _warble(rng, n):
    t = np.arange(n) / RATE
    return _tone(rng.uniform(500, 3000) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(6, 12) * t)))


def _pulses(rng, n):
    t = np.arange(n) / RATE
    gate = (np.sin(2 * np.pi * rng.uniform(6, 12) * t + rng.uniform(0, 2 * np.pi)) > 0).astype(float)
    return _tone(np.full(n, rng.uniform(300, 4000))) * gate


def _chord(rng, n):
    low = rng.uniform(200, 600)
    return 0.5 * (_tone(np.full(n, low)) + _tone(np.full(n, low * rng.uniform(3, 8))))


def _rise_fall(rng, n):
    half = n // 2
    up = _glide(rng, half, (200, 600), (2000, 6000))
    return _tone(np.r_[up, np.geomspace(up[-1], rng.uniform(200, 600), n - half)])


def _fall_rise(rng, n):
    half = n // 2
    down = _glide(rng, half, (2000, 6000), (200, 600))
    return _tone(np.r_[down, np.geomspace(down[-1], rng.uniform(2000, 6000), n - half)])


def _steps(rng, n):
    start, ratio = rng.uniform(200, 700), rng.uniform(1.6, 2.4)
    return _tone(np.repeat([start, start * ratio, start * ratio ** 2], -(-n // 3))[:n])


def _clicks(rng, n):
    wave = np.zeros(n)
    period = int(RATE / rng.uniform(8, 15))
    for start in range(int(rng.integers(0, period)), n, period):
        wave[start:start + 80] = rng.normal(size=len(wave[start:start + 80]))  # 5 ms broadband bursts
    return wave


SOURCE_SOUNDS: dict[str, Callable] = {"steady_low": _steady_low, "steady_high": _steady_high, "rising": _rising,
                                      "falling": _falling, "warble": _warble, "pulses": _pulses}
PICTURE_SOUNDS: dict[str, Callable] = {"chord": _chord, "rise_fall": _rise_fall, "fall_rise": _fall_rise,
                                       "steps": _steps, "clicks": _clicks}


def make_sound(kind: Callable, rng: np.random.Generator) -> np.ndarray:
    """One clip of ``kind``: random loudness, a random onset, background noise; float32 in [-1, 1].

    Example:
        >>> make_sound(SOURCE_SOUNDS["rising"], np.random.default_rng(0)).shape
        (5360,)
    """
    n = int(round(SECONDS * RATE))
    wave = np.zeros(n)
    onset = int(rng.integers(0, n // 8))
    wave[onset:] = kind(rng, n - onset) * rng.uniform(0.3, 0.8)
    wave += rng.normal(scale=rng.uniform(0.005, 0.05), size=n)
    return np.clip(wave, -1, 1).astype(np.float32)


def feature_extractor():
    """The AST front end both the audio model and the pictures use: 32 mel bands x 32 frames, AST's normalisation."""
    from transformers import ASTFeatureExtractor

    return ASTFeatureExtractor(num_mel_bins=MEL_BINS, max_length=FRAMES, sampling_rate=RATE)


def spectrogram_picture(wave: np.ndarray, extractor=None):
    """The clip as the AST sees it, as an 8-bit gray picture: mel bands down the rows (low first), frames across.

    Pixel p = 255 (v + 1) / 2 for the extractor's normalised value v (clipped to [-1, 1]), so an image
    model normalising with mean = std = 0.5 reads v again.

    Example:
        >>> spectrogram_picture(make_sound(PICTURE_SOUNDS["chord"], np.random.default_rng(0))).size
        (32, 32)
    """
    from PIL import Image

    extractor = extractor or feature_extractor()
    values = extractor(wave, sampling_rate=RATE, return_tensors="np")["input_values"][0]  # (frames, mel bands)
    pixels = np.round((np.clip(values.T, -1, 1) + 1) / 2 * 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


def write_clips(folder: str | Path, kinds: dict[str, Callable], per_class: int, seed: int) -> Path:
    """``folder/<class>/<i>.wav`` (16 kHz mono PCM), ``per_class`` clips of each kind, drawn from ``seed``."""
    import soundfile as sf

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for name, kind in kinds.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sf.write(folder / name / f"{i}.wav", make_sound(kind, rng), RATE, subtype="PCM_16")
    return folder


def write_pictures(folder: str | Path, kinds: dict[str, Callable], per_class: int, seed: int) -> Path:
    """``folder/<class>/<i>.png``: the spectrogram picture of ``per_class`` clips of each kind, drawn from ``seed``."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    extractor = feature_extractor()
    for name, kind in kinds.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            spectrogram_picture(make_sound(kind, rng), extractor).save(folder / name / f"{i}.png")
    return folder


def write_tiny_ast(folder: str | Path, hidden: int = 64, layers: int = 4, heads: int = 4, patch: int = 8) -> Path:
    """A config-only Audio Spectrogram Transformer (strategy scratch trains it from random weights) and its
    feature extractor: ``patch``-px patches without overlap, so its 4x4 patch grid is a 32-px picture's."""
    from transformers import ASTConfig

    folder = Path(folder)
    ASTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=2 * hidden,
              patch_size=patch, num_mel_bins=MEL_BINS, max_length=FRAMES, frequency_stride=patch, time_stride=patch,
              layer_norm_eps=1e-6).save_pretrained(folder)  # timm's ViT epsilon: the conversion is then exact
    feature_extractor().save_pretrained(folder)
    return folder


def write_study_inputs(root: str | Path, sounds_per_class: int = 60, pictures_per_class: int = 40,
                       seed: int = 0) -> dict[str, Path]:
    """Everything ``recipes/configs/study/audio_to_visual.yaml`` names, under ``root``: the source clips
    (``sounds/``), the target pictures (``pictures/``) and the tiny AST's config (``ast/``).

    Example:
        >>> write_study_inputs("outputs/audio_to_visual/inputs")["pictures"]  # doctest: +SKIP
        PosixPath('outputs/audio_to_visual/inputs/pictures')
    """
    root = Path(root)
    paths = {"sounds": write_clips(root / "sounds", SOURCE_SOUNDS, sounds_per_class, seed),
             "pictures": write_pictures(root / "pictures", PICTURE_SOUNDS, pictures_per_class, seed + 1),
             "ast": write_tiny_ast(root / "ast")}
    logger.info("Audio-to-visual inputs under %s: %d clips of %d sounds, %d pictures of %d others", root,
                sounds_per_class * len(SOURCE_SOUNDS), len(SOURCE_SOUNDS), pictures_per_class * len(PICTURE_SOUNDS),
                len(PICTURE_SOUNDS))
    return paths
