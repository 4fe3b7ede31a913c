"""One rendered episode of an agent, written as a GIF (Pillow) or an MP4 (imageio-ffmpeg): the ``render`` extra.

Classic-control environments draw their ``rgb_array`` frames with pygame, which is not part of the
``rl`` extra: ``pip install 'hftl[render]'`` adds it (and imageio + imageio-ffmpeg for MP4). What is
missing is checked before the episode runs, and named in one line. The episode uses the same
deterministic actions and episode seed as the first episode of an evaluation, and the file is
written to a temporary name and renamed into place.

Example:
    >>> render_episode(agent.policy, EnvConfig("CartPole-v1", {"length": 1.0}), "episode.gif")  # doctest: +SKIP
    {'path': 'episode.gif', 'frames': 501, 'return': 500.0, 'fps': 50}
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from hftl.errors import ConfigError
from hftl.rl.envs import EVAL_SEED, EnvConfig, make_env

INSTALL = "pip install 'hftl[render]'"
FORMATS = {".gif": ("pygame",), ".mp4": ("pygame", "imageio", "imageio_ffmpeg")}


def check_render(path: str | Path) -> Path:
    """``path`` as a Path when its format can be written here; else one ConfigError naming the fix.

    Example:
        >>> check_render("episode.gif")  # doctest: +SKIP
        PosixPath('episode.gif')
    """
    # Rendering off screen needs no sound: without these, pygame greets on stdout and SDL's audio complains on
    # stderr on a headless machine (no XDG_RUNTIME_DIR). A user's own settings win.
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"Cannot render an episode to '{path}': give a .gif or .mp4 file name.")
    for name in FORMATS[suffix]:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"Rendering an episode to {suffix[1:].upper()} needs {name.replace('_', '-')}, which "
                              f"is not installed: {INSTALL}.") from None
    return path


def render_episode(policy, env: EnvConfig, path: str | Path, seed: int | None = None, deterministic: bool = True,
                   max_steps: int | None = None) -> dict:
    """Run one episode of ``policy`` (an SB3 policy) on the variant and write its frames to ``path`` (.gif or .mp4).

    ``seed`` defaults to the first evaluation episode's seed; ``max_steps`` cuts a long episode short.
    Returns the file, the number of frames, the episode's return and the frame rate.

    Example:
        >>> render_episode(agent.policy, EnvConfig("CartPole-v1"), "episode.mp4")["frames"]  # doctest: +SKIP
        501
    """
    path = check_render(path)
    e = make_env(env, render_mode="rgb_array")
    try:
        fps = int(e.metadata.get("render_fps") or 30)
        obs, _ = e.reset(seed=EVAL_SEED if seed is None else seed)
        frames, total, steps, done = [e.render()], 0.0, 0, False
        was_training = policy.training
        policy.set_training_mode(False)
        while not done and (max_steps is None or steps < max_steps):
            action, _ = policy.predict(obs[None], deterministic=deterministic)
            obs, reward, terminated, truncated, _ = e.step(action[0])
            total += float(reward)
            steps += 1
            done = terminated or truncated
            frames.append(e.render())
        policy.set_training_mode(was_training)
    finally:
        e.close()
    _write(frames, path, fps)
    return {"path": str(path), "frames": len(frames), "return": total, "fps": fps}


def _write(frames: list[np.ndarray], path: Path, fps: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # the suffix tells imageio the format
    try:
        if path.suffix.lower() == ".gif":
            from PIL import Image

            # A shared palette from the first frame: classic-control scenes have a handful of colours.
            first = Image.fromarray(frames[0]).quantize(colors=64)
            images = [first] + [Image.fromarray(f).quantize(palette=first) for f in frames[1:]]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=max(20, round(1000 / fps)), loop=0)
        else:
            import imageio.v2 as imageio

            with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1) as writer:
                for frame in frames:
                    writer.append_data(frame)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
