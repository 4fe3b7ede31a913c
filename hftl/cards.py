"""Model cards that record how a model was transferred, rendered with huggingface_hub's ModelCard.

The front matter (``library_name``, ``base_model`` and its relation, ``datasets``, ``metrics``,
``model-index``) is built with ``ModelCardData``/``EvalResult`` so it round-trips through
``ModelCard.load``; the body records the transfer: source, strategy, frozen groups, learning
rates, LoRA settings, hardware, time and memory, the study verdict when there is one.

Example:
    >>> card = render_card(info)  # doctest: +SKIP
    >>> card.save("outputs/run/README.md")  # doctest: +SKIP
"""

from __future__ import annotations

import platform
from pathlib import Path

TEMPLATE = Path(__file__).parent / "model_cards" / "default.md"

PIPELINE_TAGS = {"image_classification": "image-classification", "text_classification": "text-classification",
                 "causal_lm": "text-generation"}
TASK_NAMES = {"image_classification": "Image Classification", "text_classification": "Text Classification",
              "causal_lm": "Text Generation"}


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def usage_snippet(library: str, task: str, repo: str, is_adapter: bool) -> str:
    if is_adapter:
        return ("import hftl\n"
                f"model = hftl.load(\"{repo}\")  # rebuilds the base model and applies the adapter\n"
                f"# or: peft.PeftModel.from_pretrained(base_model, \"{repo}\")")
    if library == "timm":
        return ("import timm\n"
                f"model = timm.create_model(\"hf-hub:{repo}\", pretrained=True)  # or \"local-dir:<folder>\"\n"
                "config = timm.data.resolve_data_config({}, model=model)\n"
                "transform = timm.data.create_transform(**config)")
    auto = "AutoModelForCausalLM" if task == "causal_lm" else "AutoModelForSequenceClassification"
    return (f"from transformers import AutoTokenizer, {auto}\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")\n"
            f"model = {auto}.from_pretrained(\"{repo}\")")


def render_card(info: dict):
    """Render a ``huggingface_hub.ModelCard`` from the run's facts (see ``hftl.api`` for the keys)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    task = info["task"]
    metrics = {k: float(v) for k, v in info.get("metrics", {}).items()}
    dataset = info.get("data", "unknown")
    eval_results = [
        EvalResult(task_type=PIPELINE_TAGS[task], task_name=TASK_NAMES[task], dataset_type=dataset,
                   dataset_name=dataset, dataset_split="validation", metric_type=name, metric_value=value)
        for name, value in metrics.items() if name in ("accuracy", "f1", "perplexity")
    ]
    base = info.get("base_model") if info.get("base_source") == "hub" else None
    data_kwargs = dict(
        library_name="peft" if info.get("is_adapter") else info["library"],
        pipeline_tag=PIPELINE_TAGS[task],
        license=info.get("license", "apache-2.0"),
        tags=["hftl", "transfer-learning", info.get("strategy", "finetune"), info["library"]],
        metrics=[m for m in ("accuracy", "f1", "perplexity") if m in metrics],
        model_name=info.get("model_name", "hftl-model"),
        eval_results=eval_results or None,
    )
    if base:
        data_kwargs["base_model"] = base
        data_kwargs["base_model_relation"] = "adapter" if info.get("is_adapter") else "finetune"
    if dataset and not dataset.startswith(("builtin:", "/", ".")) and "/" in dataset:
        data_kwargs["datasets"] = [dataset]
    card_data = ModelCardData(**data_kwargs)
    desc = info.get("strategy_info", {})
    lora = None
    if info.get("is_adapter"):
        lora = (f"rank {desc.get('lora_r')}, alpha {desc.get('lora_alpha')}, dropout {desc.get('lora_dropout')}, "
                f"{desc.get('target_modules')} target modules; {desc.get('trainable_params')} of "
                f"{desc.get('total_params')} parameters trained (head saved in full).")
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=info.get("model_name", "hftl-model"),
        summary=info.get("summary", ""),
        task=task,
        base_model_line=info.get("base_model_line", "random initialisation"),
        strategy=info.get("strategy", "finetune"),
        frozen=desc.get("frozen_groups", "none") if desc.get("frozen_groups") else "none",
        data=dataset,
        num_train=info.get("num_train", "?"),
        num_validation=info.get("num_validation", "?"),
        num_labels=info.get("num_labels", "?"),
        epochs=info.get("epochs"),
        global_batch_size=info.get("global_batch_size"),
        lr=info.get("lr"),
        scheduler=info.get("scheduler"),
        mixed_precision=info.get("mixed_precision", "no"),
        hardware=info.get("hardware") or hardware(),
        train_time=f"{info.get('train_seconds', 0):.1f} s",
        peak_memory=info.get("peak_memory", "n/a"),
        chain=info.get("chain"),
        lr_groups=desc.get("lr_groups"),
        lora=lora,
        metrics=metrics,
        study=info.get("study"),
        usage=usage_snippet(info["library"], task, info.get("repo_id") or "<folder>", info.get("is_adapter", False)),
        limitations=info.get("limitations") or (
            "Trained on a small data set; check it on data from your own setting before relying on it. "
            "Validation metrics come from a held-out split of the same source, not an independent test set."),
    )
