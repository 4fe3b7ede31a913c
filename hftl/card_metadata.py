"""What the Hub accepts in a model card's metadata, checked offline, before anything is uploaded.

The Hub refuses a README whose front matter it cannot accept (an unknown license, a ``base_model``
that is not a repo id, ``tags`` that are not a list, ...). :func:`validate_metadata` lists those
problems as sentences; :func:`check_metadata` raises one :class:`~hftl.errors.HubError` naming them
all. :func:`hftl.cards.card_for_repo` checks the card it builds for an upload with them, so
:func:`hftl.hub.push` fails before uploading anything.

Example:
    >>> validate_metadata({"license": "mit", "tags": "hftl"})
    ['tags must be a list of strings, not str']
"""

from __future__ import annotations

import re

from hftl.errors import HubError

# What the Hub accepts (hub-docs repositories-licenses.md; huggingface.js packages/tasks pipelines.ts).
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl
gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0
postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2
llama3.3 llama4 gemma apple-ascl apple-amlr h-research intel-research fair-noncommercial-research-license
unknown other
""".split())
HUB_PIPELINE_TAGS = frozenset("""
text-classification token-classification table-question-answering question-answering zero-shot-classification
translation summarization feature-extraction text-generation text2text-generation fill-mask sentence-similarity
text-to-speech text-to-audio automatic-speech-recognition audio-to-audio audio-classification audio-text-to-text
voice-activity-detection depth-estimation image-classification object-detection image-segmentation text-to-image
image-to-text image-to-image image-to-video unconditional-image-generation video-classification
reinforcement-learning robotics tabular-classification tabular-regression tabular-to-text table-to-text
multiple-choice text-ranking text-retrieval time-series-forecasting text-to-video image-text-to-text
visual-question-answering document-question-answering zero-shot-image-classification graph-ml mask-generation
zero-shot-object-detection text-to-3d image-to-3d image-feature-extraction video-text-to-text keypoint-detection
visual-document-retrieval any-to-any biology other
""".split())
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
LIST_FIELDS = ("tags", "datasets", "metrics", "language")


def is_repo_id(value) -> bool:
    """Whether ``value`` is a Hub repo id (``org/name``), not a path, URL or prefixed reference."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(value, str) or ":" in value or value.startswith(("/", ".", "~")):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def validate_metadata(data: dict) -> list[str]:
    """The problems the Hub would reject a card's metadata for, as sentences (empty when none).

    Checks what the Hub checks on a README commit: ``license`` in the Hub's list (``other`` with a
    ``license_name``), ``pipeline_tag`` a known task, ``base_model`` one or more repo ids (not a
    path, URL or ``hf-hub:`` reference) with a known ``base_model_relation``, list fields that are
    lists of strings, ``datasets`` that are repo ids, and a well-formed ``model-index``.

    Example:
        >>> validate_metadata({"license": "mit", "tags": "hftl"})
        ['tags must be a list of strings, not str']
    """
    problems = []
    if not isinstance(data, dict):
        return [f"the metadata must be a mapping, not {type(data).__name__}"]
    lic = data.get("license")
    if lic is not None:
        if not isinstance(lic, str) or lic not in HUB_LICENSES:
            problems.append(f"license '{lic}' is not a license the Hub knows (e.g. apache-2.0, mit, cc-by-4.0; or "
                            "'other' with license_name)")
        elif lic == "other" and not data.get("license_name"):
            problems.append("license 'other' needs license_name (and license_link)")
    tag = data.get("pipeline_tag")
    if tag is not None and tag not in HUB_PIPELINE_TAGS:
        problems.append(f"pipeline_tag '{tag}' is not a Hub task (e.g. image-classification, text-classification)")
    library = data.get("library_name")
    if library is not None and (not isinstance(library, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.\-]*", library)):
        problems.append(f"library_name '{library}' must be a lower-case library name such as timm or transformers")
    base = data.get("base_model")
    if base is not None:
        bases = base if isinstance(base, list) else [base]
        if not bases or not all(is_repo_id(b) for b in bases):
            problems.append(f"base_model {base!r} must be a Hub model id (org/name) or a list of them, not a local "
                            "path, URL or prefixed reference")
    relation = data.get("base_model_relation")
    if relation is not None:
        if relation not in BASE_MODEL_RELATIONS:
            problems.append(f"base_model_relation '{relation}' must be one of {', '.join(BASE_MODEL_RELATIONS)}")
        elif base is None:
            problems.append("base_model_relation is set but base_model is not")
    for key in LIST_FIELDS:
        value = data.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)):
            problems.append(f"{key} must be a list of strings, not {type(value).__name__}"
                            if not isinstance(value, list) else f"{key} must hold only non-empty strings: {value!r}")
    datasets = data.get("datasets")
    if isinstance(datasets, list):
        bad = [d for d in datasets if isinstance(d, str) and not is_repo_id(d)]
        if bad:
            problems.append(f"datasets {bad} are not Hub dataset ids")
    index = data.get("model-index")
    if index is not None:
        from huggingface_hub.repocard_data import model_index_to_eval_results

        try:
            _, results = model_index_to_eval_results(index)
            bad_values = [r.metric_type for r in results if not isinstance(r.metric_value, (int, float, str))]
            if bad_values:
                problems.append(f"model-index metric values must be numbers: {bad_values}")
        except Exception as e:
            problems.append(f"model-index is malformed ({type(e).__name__}: {e}); it needs name and results with "
                            "task.type, dataset.name/type and metrics (type, value)")
    return problems


def check_metadata(data: dict, where: str = "the model card") -> None:
    """Raise a :class:`HubError` naming every field of ``data`` the Hub would reject.

    Example:
        >>> check_metadata({"license": "mit", "tags": ["hftl"]})
    """
    problems = validate_metadata(data)
    if problems:
        raise HubError(f"The metadata of {where} would be rejected by the Hub: " + "; ".join(problems)
                       + ". Fix the README.md front matter (or pass a valid --license); nothing was uploaded.")
