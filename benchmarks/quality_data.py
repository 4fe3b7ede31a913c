"""Data sets for benchmarks/quality.py, made here so that none of them is the demo's (issue 10).

Each maker writes a train and a test split with disjoint examples into ``root`` and returns their
paths. Images are image folders (``<class>/<i>.png``); texts are JSONL files ``{"text", "label"}``.

- ``shapes``: circles, squares, triangles, crosses; random size, place and colour on noise (32 px).
- ``glyphs``: ten letters in Pillow's own font, random size, rotation, colour and place (32 px).
- ``docstrings``: the first paragraph of real docstrings from five standard-library packages,
  labelled by package (email, asyncio, xml, logging, multiprocessing). Real English, written by people.
- ``tickets``: support tickets on four topics (billing, delivery, account, bug), composed from
  phrase lists that share many words across topics.
- ``reviews_score``: product reviews whose score (1-5) follows from the words chosen, plus noise.
- ``weather_heat``: weather reports whose target is the temperature the words describe, plus noise.
- ``vowels``: five sung vowels (a, e, i, o, u) by formant synthesis: random pitch, speaker size
  (formants scaled together), length, vibrato and noise (16 kHz wav folders).
- ``timbres``: six instrument-like timbres (flute, clarinet, brass, pluck, bell, bowed) at random
  pitch, length and loudness, with noise. Neither set is the demo's sounds (``hftl.sounds``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _split_write(root: Path, name: str, rows: list[dict], per_class_train: int | None, train_share: float,
                 seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    if per_class_train is None:  # regression: a share of the rows
        cut = int(len(rows) * train_share)
        train, test = rows[:cut], rows[cut:]
    else:
        seen: dict = {}
        train, test = [], []
        for r in rows:
            k = seen.get(r["label"], 0)
            (train if k < per_class_train else test).append(r)
            seen[r["label"]] = k + 1
    paths = []
    for split, part in (("train", train), ("test", test)):
        path = root / f"{name}-{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
        paths.append(path)
    return paths[0], paths[1]


# ------------------------------------------------------------------------------ images

def _noise(rng, size: int):
    from PIL import Image

    return Image.fromarray(rng.integers(0, 120, size=(size, size, 3), dtype=np.uint8))


def draw_shape(rng, name: str, size: int = 32):
    from PIL import ImageDraw

    img = _noise(rng, size)
    draw = ImageDraw.Draw(img)
    r = int(rng.integers(5, 12))
    cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, size=2))
    colour = tuple(int(v) for v in rng.integers(130, 256, size=3))
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        draw.ellipse(box, fill=colour)
    elif name == "square":
        draw.rectangle(box, fill=colour)
    elif name == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, r // 3)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    return img


def _draw_glyph(rng, letter: str, size: int = 32):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=int(rng.integers(16, 27)))  # Pillow's bundled font: same on every machine
    layer = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(layer).text((size, size), letter, fill=255, font=font, anchor="mm")
    layer = layer.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR)
    dx, dy = (int(v) for v in rng.integers(-5, 6, size=2))
    layer = layer.crop((size // 2 + dx, size // 2 + dy, size // 2 + dx + size, size // 2 + dy + size))
    img = _noise(rng, size)
    colour = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(130, 256, size=3)))
    img.paste(colour, (0, 0), layer)
    return img


def image_folders(root: Path, name: str, per_class_train: int, per_class_test: int, seed: int = 0) -> tuple[Path, Path]:
    """(train folder, test folder) of ``shapes`` or ``glyphs``."""
    classes = ("circle", "square", "triangle", "cross") if name == "shapes" else tuple("ABCDEFGHKR")
    draw = draw_shape if name == "shapes" else _draw_glyph
    return _class_folders(root, name, classes, (per_class_train, per_class_test), seed,
                          lambda rng, cls, path: draw(rng, cls).save(path.with_suffix(".png")))


def _class_folders(root: Path, name: str, classes, counts: tuple[int, int], seed: int, write) -> tuple[Path, Path]:
    """``root/NAME-train`` and ``root/NAME-test``, each ``<class>/<i>``, written by ``write(rng, class, path)``
    from one seeded generator, in a fixed order."""
    rng = np.random.default_rng(seed)
    out = []
    for split, n in zip(("train", "test"), counts):
        folder = root / f"{name}-{split}"
        for cls in classes:
            (folder / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write(rng, cls, folder / cls / str(i))
        out.append(folder)
    return out[0], out[1]


# ------------------------------------------------------------------------------ texts

DOC_PACKAGES = ("email", "asyncio", "xml", "logging", "multiprocessing")


def _docstrings(package: str) -> list[str]:
    import importlib
    import inspect
    import pkgutil

    module = importlib.import_module(package)
    modules = [module]
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), package + "."):
        if "test" not in info.name:
            try:
                modules.append(importlib.import_module(info.name))
            except Exception:  # noqa: BLE001 - a platform-specific submodule: its docstrings are simply absent
                pass
    found = set()
    for mod in modules:
        for obj in list(vars(mod).values()):
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            members = [obj] + (list(vars(obj).values()) if inspect.isclass(obj) else [])
            for m in members:
                if inspect.isfunction(m) or inspect.isclass(m):
                    doc = inspect.getdoc(m)
                    if doc:
                        first = " ".join(doc.split("\n\n")[0].split())
                        if 30 < len(first) < 300:
                            found.add(first)
    return sorted(found)


def docstrings(root: Path, per_class_train: int = 30, seed: int = 0) -> tuple[Path, Path]:
    rows = [{"text": t, "label": p} for p in DOC_PACKAGES for t in _docstrings(p)]
    return _split_write(root, "docstrings", rows, per_class_train, 0, seed)


TICKET_TOPICS = {
    "billing": ["I was charged twice for my order", "the invoice shows the wrong amount", "my card was billed again",
                "I want a refund for the subscription", "the price on the receipt is higher than on the site",
                "why did my payment fail", "the discount code was not applied to the total"],
    "delivery": ["my parcel has not arrived", "the courier left the box at the wrong door", "tracking has not moved",
                 "the package arrived damaged", "delivery was promised for Monday", "the order is stuck in the depot",
                 "can I change the delivery address"],
    "account": ["I cannot log in to my account", "the password reset email never came", "please change my email",
                "my account was locked", "I want to delete my profile", "two-factor codes do not work",
                "someone else signed in to my account"],
    "bug": ["the app crashes when I open the order page", "the button does nothing", "the page shows an error",
            "the checkout screen freezes", "images do not load in the app", "the search returns nothing",
            "the app logs me out after every update"],
}
OPENERS = ["Hi,", "Hello team,", "Good morning,", "Hey,", "", "Dear support,", "Urgent:"]
NEUTRAL = ["and nobody answered", "and I waited on the phone for an hour", "since yesterday", "on my phone",
           "and the chat bot did not help", "for the third time this month"]
CLOSERS = ["Thanks.", "Please help.", "This is the second time.", "What should I do?", "", "Regards.",
           "I have been a customer for years.", "It happened again today with my last order."]


def tickets(root: Path, per_topic: int = 120, per_class_train: int = 30, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    rows = []
    for topic, phrases in TICKET_TOPICS.items():
        seen = set()
        while len(seen) < per_topic:
            others = [q for t, ps in TICKET_TOPICS.items() for q in ps if t != topic]
            # One ticket in three also mentions another topic in passing: the label is the main complaint.
            aside = f"also {rng.choice(others)}" if rng.random() < 1 / 3 else rng.choice(NEUTRAL)
            body = " ".join(p for p in (rng.choice(OPENERS), rng.choice(phrases) + ",", aside + ".",
                                        rng.choice(CLOSERS)) if p)
            seen.add(body)
        rows += [{"text": t, "label": topic} for t in sorted(seen)]
    return _split_write(root, "tickets", rows, per_class_train, 0, seed)


REVIEW_WORDS = {2: ["superb", "excellent", "wonderful", "flawless"], 1: ["good", "solid", "nice", "handy"],
                0: ["okay", "average", "acceptable", "plain"], -1: ["flimsy", "slow", "disappointing", "noisy"],
                -2: ["awful", "useless", "broken", "terrible"]}
PRODUCTS = ["kettle", "lamp", "backpack", "blender", "keyboard", "tent", "jacket", "drill", "speaker", "chair"]


def reviews_score(root: Path, n: int = 400, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = (int(v) for v in rng.integers(-2, 3, size=2))
        wa, wb = rng.choice(REVIEW_WORDS[a]), rng.choice(REVIEW_WORDS[b])
        text = f"The {rng.choice(PRODUCTS)} is {wa}, and the delivery was {wb}."
        rows.append({"text": text, "label": round(float(np.clip(3 + 0.7 * a + 0.3 * b + rng.normal(0, 0.25), 1, 5)), 3)})
    return _split_write(root, "reviews_score", rows, None, 0.5, seed)


HEAT_WORDS = {35: ["scorching", "sweltering", "baking hot"], 25: ["warm", "balmy", "sunny and warm"],
              15: ["mild", "pleasant", "fresh"], 5: ["chilly", "cold", "nippy"], -5: ["freezing", "icy", "bitter"]}
PLACES = ["the coast", "the hills", "the city", "the valley", "the north", "the south", "the islands"]


def weather_heat(root: Path, n: int = 400, seed: int = 1) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    rows = []
    temps = list(HEAT_WORDS)
    for _ in range(n):
        t = temps[int(rng.integers(len(temps)))]
        text = f"Tomorrow in {rng.choice(PLACES)}: a {rng.choice(HEAT_WORDS[t])} day, {rng.choice(['wind', 'rain', 'clouds', 'clear skies'])} later."
        rows.append({"text": text, "label": round(float(t + rng.normal(0, 2.0)), 2)})
    return _split_write(root, "weather_heat", rows, None, 0.5, seed)


# ------------------------------------------------------------------------------ sounds

RATE = 16000
# Mean formants (Hz) of adult male vowels, Peterson & Barney (1952): F1, F2, F3.
FORMANTS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010), "o": (570, 840, 2410),
            "u": (300, 870, 2240)}


def _pitch_track(rng, n: int, f0: float) -> np.ndarray:
    """f0 with a little vibrato (5-6 Hz, up to 2%) and drift."""
    t = np.arange(n) / RATE
    return f0 * (1 + rng.uniform(0, 0.02) * np.sin(2 * np.pi * rng.uniform(5, 6) * t)
                 + rng.uniform(-0.03, 0.03) * t)


def _harmonics(freq: np.ndarray, amplitudes) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(freq) / RATE
    return sum(a * np.sin(k * phase) for k, a in enumerate(amplitudes, start=1) if a)


def _vowel(rng, label: str, n: int) -> np.ndarray:
    from scipy.signal import lfilter

    f0 = rng.uniform(90, 260)
    source = _harmonics(_pitch_track(rng, n, f0), [1 / k for k in range(1, int(7000 / f0))])  # a glottal-like buzz
    size = rng.uniform(0.88, 1.2)  # speaker: shorter vocal tracts raise every formant together
    wave = np.zeros(n)
    for formant, gain in zip(FORMANTS[label], (1.0, 0.6, 0.3)):
        f, bandwidth = formant * size * rng.uniform(0.95, 1.05), rng.uniform(60, 120)
        r = np.exp(-np.pi * bandwidth / RATE)  # a two-pole resonator at the formant
        wave += gain * lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / RATE), r * r], source)
    return wave


def _timbre(rng, label: str, n: int) -> np.ndarray:
    f0 = rng.uniform(150, 700)
    freq, t = _pitch_track(rng, n, f0), np.arange(n) / RATE
    if label == "flute":  # nearly a sine, with breath
        return _harmonics(freq, [1, 0.1, 0.03]) + 0.05 * rng.normal(size=n)
    if label == "clarinet":  # odd harmonics
        return _harmonics(freq, [1 / k if k % 2 else 0 for k in range(1, 16)])
    if label == "brass":  # every harmonic, bright, with a slow attack
        return _harmonics(freq, [1 / k ** 0.7 for k in range(1, 16)]) * np.minimum(1, t / 0.08)
    if label == "pluck":  # Karplus-Strong: a noise burst in a decaying delay line
        period = max(2, int(RATE / f0))
        buffer, out = rng.uniform(-1, 1, period), np.zeros(n)
        for i in range(n):
            out[i] = buffer[i % period]
            buffer[i % period] = 0.996 * 0.5 * (buffer[i % period] + buffer[(i + 1) % period])
        return out
    if label == "bell":  # inharmonic partials, each decaying
        ratios = (0.56, 0.92, 1.19, 1.71, 2.0, 2.74, 3.0)
        return sum(np.sin(2 * np.pi * f0 * q * t) * np.exp(-t * rng.uniform(2, 6) * q) for q in ratios)
    if label == "bowed":  # sawtooth-like with strong vibrato and bow noise
        vibrato = f0 * (1 + 0.02 * np.sin(2 * np.pi * 6 * t))
        return _harmonics(vibrato, [1 / k for k in range(1, 12)]) * (1 + 0.1 * rng.normal(size=n))
    raise ValueError(label)


def sound_folders(root: Path, name: str, per_class_train: int, per_class_test: int,
                  seed: int = 0) -> tuple[Path, Path]:
    """(train folder, test folder) of ``vowels`` or ``timbres``: ``<class>/<i>.wav``, 16 kHz mono."""
    import soundfile as sf

    classes, make = ((tuple(FORMANTS), _vowel) if name == "vowels" else
                     (("flute", "clarinet", "brass", "pluck", "bell", "bowed"), _timbre))

    def write(rng, cls, path: Path) -> None:
        n = int(RATE * rng.uniform(0.4, 1.0))
        wave = make(rng, cls, n)
        wave = wave / (np.abs(wave).max() + 1e-9) * rng.uniform(0.2, 0.8)
        onset = np.zeros(int(rng.integers(0, RATE // 10)))  # a random start
        wave = np.concatenate([onset, wave]) + rng.normal(scale=rng.uniform(0.003, 0.03), size=len(onset) + n)
        sf.write(path.with_suffix(".wav"), np.clip(wave, -1, 1).astype(np.float32), RATE, subtype="PCM_16")

    return _class_folders(root, name, classes, (per_class_train, per_class_test), seed, write)
