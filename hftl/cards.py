"""Model cards that record how a model was transferred, rendered with huggingface_hub's ModelCard.

The front matter (``library_name``, ``pipeline_tag``, ``base_model`` and its relation,
``datasets``, ``metrics``, ``license``, ``tags``, ``model-index``) is built with
``ModelCardData``/``EvalResult`` so it round-trips through ``ModelCard.load``; the body records
the transfer: source model and revision, strategy, frozen groups, learning rates, LoRA settings,
earlier steps (a masked-LM adaptation), hardware, time and memory, the study verdict when there is
one, how to load the model (code that runs), and limitations.

The Hub refuses a README whose metadata it cannot accept (an unknown license, a ``base_model``
that is not a repo id, ``tags`` that are not a list, ...); :mod:`hftl.card_metadata` checks those
fields offline, and :func:`card_for_repo` runs its checks, so :func:`hftl.hub.push` fails before
uploading anything.

Example:
    >>> card = render_card(info)  # doctest: +SKIP
    >>> card.save("outputs/run/README.md")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import platform
import re
from importlib.resources import files
from pathlib import Path

from hftl.card_metadata import HUB_LICENSES, check_metadata, is_repo_id
from hftl.errors import HubError
from hftl.registry import TASKS, get_task

logger = logging.getLogger(__name__)

# The card templates: the top-level model_cards/ folder, installed as the package hftl.model_cards
# (pyproject.toml maps it), so an editable install and a wheel find them alike.
TEMPLATES = "hftl.model_cards"

# Our metric names -> the Hub's metric ids (the ids of huggingface/evaluate's metrics).
HUB_METRICS = {"accuracy": "accuracy", "f1": "f1", "perplexity": "perplexity", "mse": "mse", "mae": "mae",
               "pearson": "pearsonr"}

# The "how to use" code sits between these markers so that a push can rewrite it for the repo id.
USAGE_START, USAGE_END = "<!-- hftl:usage -->", "<!-- /hftl:usage -->"
REPO_PLACEHOLDER = "<user>/<model>"


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------ provenance

def _strip_hub(model_id: str) -> str:
    return model_id[len("hf-hub:"):] if model_id.startswith("hf-hub:") else model_id


def hub_base(info: dict, _depth: int = 0) -> tuple[str | None, str | None]:
    """The Hub id (and commit) this model descends from, following hftl outputs used as starting points.

    A text classifier trained from a masked-LM adaptation run (a local folder) of ``org/bert`` has
    ``org/bert`` as its base model on the Hub. None when the chain does not start on the Hub.

    Example:
        >>> hub_base({"base_model": "hf-hub:timm/resnet18.a1_in1k", "base_source": "hub"})
        ('timm/resnet18.a1_in1k', None)
    """
    base, source = info.get("base_model"), info.get("base_source")
    if not base or _depth > 8:
        return None, None
    if source == "hub":
        return _strip_hub(str(base)), info.get("base_commit") or info.get("base_revision")
    meta = Path(str(base)).expanduser() / "hftl.json"
    if source == "local" and meta.is_file():
        return hub_base(json.loads(meta.read_text()), _depth + 1)
    return None, None


def _base_folder(info: dict) -> Path | None:
    base, source = str(info.get("base_model") or ""), info.get("base_source")
    try:
        if source == "hub" and info.get("base_commit"):
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(_strip_hub(base), "README.md", revision=info["base_commit"])
            return Path(found).parent if isinstance(found, str) else None
        if source == "local":
            from hftl.refs import PACKAGE_PREFIX, package_folder

            return package_folder(base) if base.startswith(PACKAGE_PREFIX) else Path(base).expanduser()
    except Exception:  # a card is still written without the base's license
        return None
    return None


def base_license(info: dict) -> str | None:
    """The license in the base model's own card (a derivative is bound by it), when it has one."""
    folder = _base_folder(info)
    readme = folder / "README.md" if folder else None
    if not readme or not readme.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        value = ModelCard.load(readme, ignore_metadata_errors=True).data.license
    except Exception:
        return None
    return value if isinstance(value, str) and value in HUB_LICENSES else None


def card_license(info: dict) -> str:
    """Explicit license > the base model's > ``unknown`` for pretrained weights > apache-2.0 (own weights)."""
    if info.get("license"):
        return info["license"]
    inherited = base_license(info)
    if inherited:
        return inherited
    return "unknown" if info.get("base_pretrained") else "apache-2.0"


# --------------------------------------------------------------------------------------- usage

def usage_snippet(library: str, task: str, repo: str, is_adapter: bool, revision: str | None = None,
                  meta: dict | None = None) -> str:
    """Python that loads the model from the Hub with its own library (and with hftl).

    Example:
        >>> print(usage_snippet("timm", "image_classification", "me/net", False).splitlines()[2])
        model = timm.create_model("hf-hub:me/net", pretrained=True).eval()
    """
    meta = meta or {}
    rev = f", revision=\"{revision}\"" if revision else ""
    lines = []
    if task == "simclr":  # an encoder with no classes: features, or a starting point for a classifier
        at = f"@{revision}" if revision else ""
        return "\n".join([
            "import timm", "",
            f"encoder = timm.create_model(\"hf-hub:{repo}{at}\", pretrained=True, num_classes=0).eval()",
            "# features = encoder(images)  -> (batch, num_features)",
            f"# or fine-tune it: hftl train <config> model.id=hf-hub:{repo}"])
    if task == "masked_image":  # the encoder in transformers' ViT layout at the top, the whole MAE in mae/
        return "\n".join([
            "from PIL import Image",
            "from transformers import AutoImageProcessor, ViTForImageClassification, ViTMAEForPreTraining, ViTModel", "",
            f"processor = AutoImageProcessor.from_pretrained(\"{repo}\"{rev})",
            f"encoder = ViTModel.from_pretrained(\"{repo}\"{rev}, add_pooling_layer=False).eval()",
            "pixels = processor(images=Image.open(\"image.png\").convert(\"RGB\"), return_tensors=\"pt\").pixel_values",
            "features = encoder(pixel_values=pixels).last_hidden_state[:, 0]  # the [CLS] feature: (1, hidden_size)",
            "# A classifier starts from the encoder (a new head, for your classes, trained next):",
            f"classifier = ViTForImageClassification.from_pretrained(\"{repo}\"{rev}, num_labels=2)",
            "# The whole masked autoencoder (encoder + decoder), as it inpaints:",
            f"mae = ViTMAEForPreTraining.from_pretrained(\"{repo}\"{rev}, subfolder=\"mae\").eval()"])
    if is_adapter and task == "image_captioning":  # its base is an encoder + a decoder joined by hftl
        return "\n".join(["import hftl", "",
                           "# Rebuilds the captioner the adapter was trained on (encoder + decoder) and applies it.",
                           f"captioner = hftl.load(\"{repo}\"{rev})",
                           "captions = hftl.caption(captioner, [\"image.png\"])"])
    if is_adapter:
        lines += ["import hftl", "",
                  "# Downloads the adapter, rebuilds its base model (at the recorded revision) and applies it.",
                  f"model = hftl.load(\"{repo}\"{rev})"]
        base, commit = hub_base(meta)
        n = len(meta.get("label_names") or [])
        kwargs = "".join(f", {k}={v!r}" for k, v in (meta.get("model_kwargs") or {}).items()
                         if k not in ("image_size", "trust_remote_code"))
        peft = [f"peft_model = PeftModel.from_pretrained(base, \"{repo}\"{rev}).eval()"]
        if library == "sentence-transformers":  # the base is hftl's mean-pooled classifier: hftl.load rebuilds it
            return "\n".join(lines)
        if library == "timm":
            at = f"@{commit}" if commit else ""
            source = f"hf-hub:{base}{at}" if base else f"local-dir:{meta.get('base_model', '<base folder>')}"
            peft = ["import timm", "from peft import PeftModel", "",
                    f"base = timm.create_model(\"{source}\", pretrained=True, num_classes={n}{kwargs})", *peft]
        else:
            auto = get_task(task).auto_class or "AutoModelForSequenceClassification"
            where = base or meta.get("base_model", "<base folder>")
            pinned = f", revision=\"{commit}\"" if base and commit else ""
            labels = f", num_labels={n}" if task in ("text_classification", "text_regression", "audio_classification") and n else ""
            peft = [f"from transformers import {auto}", "from peft import PeftModel", "",
                    f"base = {auto}.from_pretrained(\"{where}\"{pinned}{labels})", *peft]
        lines += ["", "# Or with peft directly, on the base model:" if base else
                  "# Or with peft directly (the base model is a local folder, not on the Hub):"]
        lines += peft if base else [f"# {line}" if line else "#" for line in peft]
    elif library == "timm":
        at = f"@{revision}" if revision else ""
        lines += ["import timm", "",
                  f"model = timm.create_model(\"hf-hub:{repo}{at}\", pretrained=True).eval()",
                  "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
                  "labels = model.pretrained_cfg.get(\"label_names\")"]
        if get_task(task).multi_label:  # several labels: a sigmoid each, the tuned thresholds are in the bias
            lines += ["# scores = model(transform(PIL.Image.open(\"image.png\").convert(\"RGB\")).unsqueeze(0)).sigmoid()[0]",
                      "# predicted = [label for label, s in zip(labels, scores) if s > 0.5]"]
        else:
            lines += ["# probs = model(transform(PIL.Image.open(\"image.png\").convert(\"RGB\")).unsqueeze(0)).softmax(-1)"]
    else:
        auto = get_task(task).auto_class or "AutoModelForSequenceClassification"
        if task == "image_captioning":
            lines += ["from PIL import Image",
                      "from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel", "",
                      f"model = VisionEncoderDecoderModel.from_pretrained(\"{repo}\"{rev}).eval()",
                      f"processor = AutoImageProcessor.from_pretrained(\"{repo}\"{rev})",
                      f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\"{rev})",
                      "pixels = processor(images=Image.open(\"image.png\").convert(\"RGB\"), return_tensors=\"pt\").pixel_values",
                      "caption = tokenizer.decode(model.generate(pixel_values=pixels)[0], skip_special_tokens=True)"]
            return "\n".join(lines)
        if library == "sentence-transformers":  # encoder, mean pooling, then the head as a Dense layer
            pick = ("# value = logits[0, 0].item()" if task == "text_regression" else
                    f"# label = {(meta.get('label_names') or [])!r}[logits[0].argmax().item()]")
            lines += ["from sentence_transformers import SentenceTransformer", "",
                      f"model = SentenceTransformer(\"{repo}\"{rev})",
                      "logits = model.encode([\"some text\"], convert_to_tensor=True)  # the last module is the head",
                      pick]
            return "\n".join(lines)
        if task == "audio_classification":
            lines += ["from transformers import pipeline", "",
                      f"classifier = pipeline(\"audio-classification\", model=\"{repo}\"{rev})",
                      "# classifier(\"clip.wav\")  -> [{'label': ..., 'score': ...}, ...]"]
            return "\n".join(lines)
        lines += [f"from transformers import AutoTokenizer, {auto}", "",
                  f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\"{rev})",
                  f"model = {auto}.from_pretrained(\"{repo}\"{rev}).eval()"]
        if task == "text_regression":
            lines += ["# value = model(**tokenizer([\"some text\"], return_tensors=\"pt\")).logits[0, 0].item()"]
        if task == "text_classification":
            lines += ["# logits = model(**tokenizer([\"some text\"], return_tensors=\"pt\")).logits",
                      "# label = model.config.id2label[logits.argmax(-1).item()]"]
        if get_task(task).multi_label:  # config.problem_type says so: pipelines apply a sigmoid per label
            lines += ["# scores = model(**tokenizer([\"some text\"], return_tensors=\"pt\")).logits.sigmoid()[0]",
                      "# labels = [model.config.id2label[i] for i, s in enumerate(scores) if s > 0.5]"]
    return "\n".join(lines)


def usage_block(library: str, task: str, repo: str, is_adapter: bool, revision: str | None = None,
                meta: dict | None = None) -> str:
    """The marked "how to use" block of a card: the snippet and the hftl command line."""
    code = usage_snippet(library, task, repo, is_adapter, revision, meta)
    inputs = "image.png" if library == "timm" or task in ("image_classification", "image_captioning", "masked_image") else \
        "clip.wav" if task == "audio_classification" else "\"some text\""
    rev = f" --revision {revision}" if revision else ""
    cli = "hftl generate" if task == "causal_lm" else "hftl predict"
    arg = "\"Once upon a time\"" if task == "causal_lm" else inputs
    note = "" if repo != REPO_PLACEHOLDER else "\nOnce pushed (`hftl push <folder> --repo-id user/name`), the id replaces `<user>/<model>`; before that, `hftl.load(\"<folder>\")` loads it.\n"
    hftl_line = "" if rev or task == "simclr" else f"\nOr from the command line: `{cli} {repo} {arg}`.\n"
    return f"{USAGE_START}\n```python\n{code}\n```\n{hftl_line}{note}{USAGE_END}"


# ------------------------------------------------------------------------------------ rendering

def _frozen_text(desc: dict) -> str:
    frozen = desc.get("frozen_groups")
    if desc.get("strategy") == "lora":
        return "the whole backbone (LoRA adapters train; the head is trained and saved in full)"
    if not frozen:
        return "none"
    names = {}
    for row in desc.get("lr_groups") or []:
        match = re.match(r"group(\d+) \((.*)\)", str(row.get("group", "")))
        if match:
            names[int(match.group(1))] = match.group(2)
    shown = ", ".join(f"{i} ({names[i]})" if i in names else str(i) for i in frozen)
    total = desc.get("num_groups")
    return f"{shown}" + (f" of {total} groups, counted from the input" if total else "")


def _chosen_text(probe: dict, grid: list) -> str:
    """How the probe's strength was chosen, as the run recorded it (older runs: their solver's default)."""
    by = probe.get("chosen_by", "leave-one-out cross-validation" if probe.get("solver") == "ridge"
                    else "5-fold cross-validation")
    if len(grid) < 2:
        return "as given (no search)"
    if by is None:  # a grid, but fewer than 4 examples: the solver takes the grid's middle value
        return f"the middle of {len(grid)} log-spaced values (too few training examples to choose by cross-validation)"
    return (f"chosen from {len(grid)} log-spaced values ({min(grid):.0e} to {max(grid):.0e}) by {by} on the "
            "training examples, then refitted on all of them")


def probe_text(probe: dict | None, strategy: str | None = None) -> str | None:
    """How a solved probe was made, for the card (``hftl.probe``'s record); None when the head was trained.

    Example:
        >>> probe_text({"solver": "lbfgs", "l2": 0.01, "C": 0.5, "grid": [1e-4, 1e-2], "seconds": 0.2})[:24]
        'Solved, not trained: mul'
    """
    if not probe:
        return None
    if "tasks" in probe:
        return " ".join(f"Task `{task}`: {probe_text(p)}" for task, p in probe["tasks"].items())
    grid = probe.get("grid") or []
    how = ("ridge regression in closed form" if probe.get("solver") == "ridge"
           else "multinomial logistic regression by full-batch L-BFGS")
    equivalent = f"scikit-learn alpha = {probe['alpha']:.3g}" if "alpha" in probe else f"scikit-learn C = {probe['C']:.3g}"
    text = (f"Solved, not trained: {how} on the frozen backbone's features, standardised for the solver (the "
            f"mean and scale are folded into the head's weight and bias). L2 strength {probe['l2']:.3g} "
            f"({equivalent}), " + _chosen_text(probe, grid) + f" ({probe.get('seconds', 0):.1f} s).")
    if probe.get("refit_examples"):
        again = probe.get("refit_l2", probe["l2"])  # older runs reused the first strength
        text += (f" Then solved again on all {probe['refit_examples']} labelled examples (training and validation), "
                 f"the strength chosen again by the same cross-validation on them: {again:.3g}. The validation "
                 "metrics above are those of the first fit, which did not see them.")
    if strategy == "lp_ft":
        text += " LP-FT (Kumar et al. 2022): the whole model was then fine-tuned from this head."
    return text


def epochs_text(info: dict) -> str:
    """Epochs planned and run, early stopping, which epoch's weights were kept, and a refit (train.refit)."""
    text = _first_fit_text(info)
    refit = info.get("refit")
    if refit:
        text += (f". Then trained again from the same start on all {refit['examples']} labelled examples (training "
                 f"and validation) for {refit['epochs']} epochs (train.refit): the saved weights are that "
                 "model's; the validation metrics below are the first fit's, which did not train on them")
    return text


def _first_fit_text(info: dict) -> str:
    planned, run, kept = info.get("epochs"), info.get("epochs_run"), info.get("kept_epoch")
    if planned == 0:
        return "none: the head was solved (see Linear probe), then scored once on the validation split"
    text = f"{planned}" if run in (None, planned) else (
        f"{run} of {planned} (stopped early: {info.get('patience')} epochs without a better validation "
        f"{info.get('metric')})")
    if kept is None or not info.get("keep_best") or not run:
        return text
    metric, p, best = info.get("metric"), info.get("kept_p"), info.get("best_epoch")
    if best is not None and best != kept:  # the best epoch's lead was within the validation split's noise
        return text + (f"; weights of the last epoch ({kept + 1}) kept: epoch {best + 1}'s better validation "
                       f"{metric} was no evidence on this many examples (sign test p = {p:.2g})")
    tested = f", better than the last epoch's (sign test p = {p:.2g})" if p is not None else ""
    return text + (f"; weights of epoch {kept + 1} kept (best validation {metric}{tested}: chosen on the split "
                   "the results below come from, so they lean optimistic)")


def render_card(info: dict):
    """Render a ``huggingface_hub.ModelCard`` from the run's facts (see ``hftl.run.write_outputs`` for the keys).

    Example:
        >>> card = render_card({"task": "image_classification", "library": "timm", "metrics": {"accuracy": 0.9}})
        >>> card.data.pipeline_tag
        'image-classification'
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    task = info["task"]
    metrics = {k: float(v) for k, v in info.get("metrics", {}).items() if isinstance(v, (int, float))}
    dataset = str(info.get("data", "unknown"))
    is_adapter = bool(info.get("is_adapter"))
    model_name = info.get("model_name", "hftl-model")
    spec = get_task(task)
    eval_results = [
        EvalResult(task_type=spec.pipeline_tag, task_name=spec.card_name, dataset_type=dataset,
                   dataset_name=dataset, dataset_split="validation", metric_type=HUB_METRICS[name],
                   metric_name=name, metric_value=value)
        for name, value in metrics.items() if name in HUB_METRICS
    ]
    base, base_commit = hub_base(info)
    tags = ["hftl", "transfer-learning", info.get("strategy", "finetune"), info["library"]]
    if is_adapter:
        tags += ["lora", "peft"]
    if info.get("distillation"):
        tags.append("knowledge-distillation")
    data_kwargs = dict(
        library_name="peft" if is_adapter else info["library"],
        pipeline_tag=spec.pipeline_tag,
        license=card_license(info),
        tags=list(dict.fromkeys(tags)),
        metrics=[HUB_METRICS[m] for m in HUB_METRICS if m in metrics],
        model_name=model_name,
        eval_results=eval_results or None,
    )
    if base:
        data_kwargs["base_model"] = base
        data_kwargs["base_model_relation"] = "adapter" if is_adapter else "finetune"
    if is_repo_id(dataset) and not dataset.startswith(("builtin:", "/", ".", "~")):
        data_kwargs["datasets"] = [dataset]
    card_data = ModelCardData(**data_kwargs)
    desc = info.get("strategy_info", {})
    lora = None
    if is_adapter:
        lora = (f"rank {desc.get('lora_r')}, alpha {desc.get('lora_alpha')}, dropout {desc.get('lora_dropout')}, "
                f"{desc.get('target_modules')} target modules; {desc.get('trainable_params')} of "
                f"{desc.get('total_params')} parameters trained (head saved in full). Stored in peft's layout "
                "(`adapter_config.json` + `adapter_model.safetensors`).")
    revision = info.get("base_revision")
    commit = info.get("base_commit")
    source_revision = (f"`{revision}`" if revision else "default branch") + (f", commit `{commit}`" if commit else "") \
        if info.get("base_source") == "hub" else "n/a (not from the Hub)"
    repo = info.get("repo_id") or REPO_PLACEHOLDER
    return ModelCard.from_template(
        card_data,
        template_str=files(TEMPLATES).joinpath("default.md").read_text(encoding="utf-8"),
        model_name=model_name,
        summary=info.get("summary", ""),
        task=task,
        base_model_line=info.get("base_model_line", "random initialisation"),
        base_hub=f"[{base}](https://huggingface.co/{base})" if base else None,
        source_revision=source_revision,
        strategy=info.get("strategy", "finetune"),
        frozen=_frozen_text(desc),
        data=dataset,
        num_train=info.get("num_train", "?"),
        num_validation=info.get("num_validation", "?"),
        labels=f"target `{info['regression_target']}`" if info.get("regression_target")
        else f"{info.get('num_labels', '?')} classes",
        epochs=epochs_text(info) if "epochs_run" in info else info.get("epochs"),
        probe=probe_text(info.get("probe"), info.get("strategy")),
        solved_only=info.get("epochs") == 0,
        global_batch_size=info.get("global_batch_size"),
        lr=info.get("lr"),
        scheduler=info.get("scheduler"),
        mixed_precision=info.get("mixed_precision", "no"),
        hardware=info.get("hardware") or hardware(),
        train_time=f"{info.get('train_seconds', 0):.1f} s",
        peak_memory=info.get("peak_memory", "n/a"),
        chain=info.get("chain"),
        distillation=info.get("distillation"),
        weights_from=info.get("weights_from"),
        caption_samples=info.get("caption_samples"),
        task_rows=info.get("task_rows"),  # a task's own facts (Task.card_facts), one table row each
        lr_groups=None if info.get("epochs") == 0 else desc.get("lr_groups"),  # a solved probe has no learning rate
        lora=lora,
        metrics=metrics,
        study=info.get("study"),
        usage=usage_block(info["library"], task, repo, is_adapter, meta={**info, "base_commit": commit or base_commit}),
        limitations=info.get("limitations") or (
            "Trained on a small data set; check it on data from your own setting before relying on it. "
            "Validation metrics come from a held-out split of the same source, not an independent test set."
            + ("" if base or info.get("base_source") != "local" else
               " The source model is a local folder: its own license and training data are not recorded here.")),
    )


def card_for_repo(text: str, repo_id: str, revision: str | None = None, kind: str = "timm", meta: dict | None = None,
                  merged: bool = False, license: str | None = None, usage: str | None = None) -> str:
    """The card as it is uploaded to ``repo_id``: usage code for that id (and revision), checked metadata.

    ``merged`` turns an adapter's card into the merged model's (library, relation, usage). ``usage``
    replaces the marked "how to use" block as it is (an RL agent's: :func:`hftl.rl.card.usage_block`).

    Example:
        >>> text = card_for_repo(open("outputs/run/README.md").read(), "me/resnet18-digits")  # doctest: +SKIP
    """
    import yaml
    from huggingface_hub import ModelCard

    meta = dict(meta or {})
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
        match = re.match(r"^\s*---\r?\n(.*?)\r?\n---", text, re.S)
        raw = (yaml.safe_load(match.group(1)) if match else {}) or {}
    except Exception as e:
        raise HubError(f"The front matter of '{repo_id}' (README.md) cannot be read as Hub metadata ({e}); fix "
                       "README.md. Nothing was uploaded.") from e
    # As written (huggingface_hub would quietly turn `tags: x` into a list; a mapping into its keys).
    check_metadata({**raw, **({"license": license} if license else {})}, f"'{repo_id}' (README.md)")
    data = card.data
    library = meta.get("library") or ("timm" if kind == "timm" else "transformers")
    is_adapter = kind == "peft"
    if merged:
        data.library_name = library
        if getattr(data, "base_model", None):
            data.base_model_relation = "finetune"
        data.tags = [t for t in (data.tags or []) if t != "peft"] + ["merged-lora"]
    if license:
        data.license = license
    if getattr(data, "eval_results", None):
        data.model_name = repo_id.split("/")[-1]
    check_metadata(data.to_dict(), f"'{repo_id}' (README.md)")
    task = meta.get("task") or {s.pipeline_tag: s.name for s in TASKS.values()}.get(getattr(data, "pipeline_tag", None),
                                                                                   "text_classification")
    if USAGE_START in card.text and USAGE_END in card.text:
        start = card.text.index(USAGE_START)
        end = card.text.index(USAGE_END) + len(USAGE_END)
        block = usage or usage_block(library, task, repo_id, is_adapter, revision, meta)
        card.text = card.text[:start] + block + card.text[end:]
    return str(card)
