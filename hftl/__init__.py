"""hftl: transfer learning across vision, text and audio on the Hugging Face stack.

Five lines in a notebook:

    >>> import hftl
    >>> result = hftl.train(None, ["model.id=timm:resnet18", "data.image_size=32", "train.epochs=1"])  # doctest: +SKIP
    >>> model = hftl.load(result.output_dir)  # doctest: +SKIP
    >>> hftl.predict(model, ["digit.png"])  # doctest: +SKIP

Nothing here parses ``sys.argv`` or prints; heavy libraries load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["train", "load", "predict", "caption", "evaluate", "load_config", "Config", "run_study", "push"]


def __getattr__(name: str):
    # Lazy: `import hftl` stays fast and side-effect free; torch loads when first needed.
    if name in ("train", "predict", "evaluate"):
        from hftl import api

        return getattr(api, name)
    if name == "load":
        from hftl.model import load

        return load
    if name in ("load_config", "Config"):
        from hftl import config

        return getattr(config, name)
    if name == "run_study":
        from hftl.study import run_study

        return run_study
    if name == "caption":
        from hftl.tasks.image_captioning import caption

        return caption
    if name == "push":
        from hftl.hub import push

        return push
    raise AttributeError(f"module 'hftl' has no attribute '{name}'")
