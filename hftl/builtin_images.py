"""The built-in image sets: scikit-learn's digits, and two disjoint halves of them for a domain shift.

``builtin:digits`` is the whole set; ``builtin:digits_a`` / ``builtin:digits_b`` (and ``digits_b_inverted``,
``_blurred``, ``_rotated``, ``_faded``) are the halves a domain-adaptation run takes as source and target
(hftl.methods.domain_adapt). Nothing is downloaded: the digits ship with scikit-learn.

Example:
    >>> images, labels, names = BUILTIN["digits_b_blurred"]()  # doctest: +SKIP
    >>> len(images), images[0].size
    (898, (32, 32))
"""

from __future__ import annotations

import numpy as np


def _digits():
    """scikit-learn's 8x8 handwritten digits: 1,797 images, 10 classes, shipped with sklearn (no download)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((img * (255 / 16)).astype(np.uint8), mode="L") for img in digits.images]
    names = [str(i) for i in range(10)]
    return images, [int(t) for t in digits.target], names


# Domain shift (hftl.methods.domain_adapt): the digits split into two disjoint halves by index, each upsampled to
# 32 px (bicubic, as the models' own resize); half a is the source, half b the target, as drawn or rendered
# differently. Disjoint halves: no digit a model trained on half a is scored again in another rendering.
DIGIT_RENDERINGS = ("plain", "inverted", "blurred", "rotated", "faded")


def _digits_half(half: str, rendering: str = "plain"):
    """Half ``a`` (even indices, 899 images) or ``b`` (odd, 898) of the digits at 32 px, in ``rendering``:

    plain: as drawn; inverted: dark strokes on white; blurred: a Gaussian blur of radius 2 px; rotated: turned by
    25-45 degrees either way (seeded per image); faded: a photocopy, strokes at 35% contrast on a mid-grey page with
    pixel noise (seeded).
    """
    from PIL import Image, ImageFilter

    images, labels, names = _digits()
    keep = range(0 if half == "a" else 1, len(images), 2)
    rng = np.random.default_rng(1234)  # the rendering's draws are part of the data set: fixed
    out = []
    for i in keep:
        img = images[i].resize((32, 32), Image.BICUBIC)
        if rendering == "inverted":
            img = Image.fromarray(255 - np.asarray(img))
        elif rendering == "blurred":
            img = img.filter(ImageFilter.GaussianBlur(radius=2))
        elif rendering == "rotated":
            angle = float(rng.uniform(25, 45)) * (1 if rng.random() < 0.5 else -1)
            img = img.rotate(angle, resample=Image.BILINEAR)
        elif rendering == "faded":
            pixels = 100 + 0.35 * np.asarray(img, dtype=np.float32) + rng.normal(0, 12, size=(32, 32))
            img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        out.append(img)
    return out, [labels[i] for i in keep], names


BUILTIN = {"digits": _digits, "digits_a": lambda: _digits_half("a"),
           **{f"digits_b_{r}" if r != "plain" else "digits_b": (lambda r=r: _digits_half("b", r))
              for r in DIGIT_RENDERINGS}}
