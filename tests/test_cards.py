"""Model cards: the transfer's provenance in the body, Hub metadata that round-trips and that the Hub accepts."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_train_overrides
from huggingface_hub import ModelCard, ModelCardData

import hftl
from hftl.card_metadata import check_metadata, validate_metadata
from hftl.cards import (
    USAGE_END,
    USAGE_START,
    card_for_repo,
    render_card,
    usage_snippet,
)
from hftl.errors import HubError

SHA = "0123456789abcdef0123456789abcdef01234567"


def round_trip(card, tmp_path):
    """Save, load back with huggingface_hub, rebuild ModelCardData from the dict: nothing may change."""
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    assert ModelCardData(**loaded.data.to_dict()).to_dict() == loaded.data.to_dict() == card.data.to_dict()
    assert validate_metadata(loaded.data.to_dict()) == []
    return loaded


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory, pretrained_folder):
    """A partial fine-tune (2 groups frozen, layer-wise LR decay) of a local source whose card says cc-by-4.0."""
    source = tmp_path_factory.mktemp("src") / "source"
    shutil.copytree(pretrained_folder, source)
    (source / "README.md").write_text("---\nlicense: cc-by-4.0\nlibrary_name: timm\n---\n# source\n")
    out = tmp_path_factory.mktemp("partial") / "partial-run"
    hftl.train(None, tiny_train_overrides(out, **{"model.id": str(source), "strategy.name": "partial",
                                                  "strategy.frozen_groups": 2, "strategy.layer_decay": 0.8,
                                                  "train.epochs": 1}))
    return out


def test_card_of_a_real_run_records_the_transfer(partial_run, tmp_path):
    card = round_trip(ModelCard.load(partial_run / "README.md"), tmp_path)
    data = card.data
    final = json.loads((partial_run / "metrics.json").read_text())["final"]
    assert (data.library_name, data.pipeline_tag) == ("timm", "image-classification")
    assert data.license == "cc-by-4.0"  # inherited from the source model's card
    assert data.base_model is None  # a local source is not a Hub id: no base_model the Hub would reject
    assert data.tags == ["hftl", "transfer-learning", "partial", "timm"]
    assert data.metrics == ["accuracy", "f1"]
    assert {r.metric_type: r.metric_value for r in data.eval_results} == {k: final[k] for k in ("accuracy", "f1")}
    assert all(r.dataset_split == "validation" for r in data.eval_results)

    text = card.text
    assert "| Strategy | partial |" in text
    assert "| Frozen layer groups | 0 (conv1), 1 (layer1) of 5 groups, counted from the input |" in text
    assert "### Learning-rate groups" in text and "| head | 0.01 |" in text
    lrs = [float(line.split("|")[2]) for line in text.splitlines() if line.startswith("| group") and "(" in line]
    assert lrs == sorted(lrs) and lrs[0] < lrs[-1]  # layer decay: deeper groups learn faster
    for row in ("| Source model | `", "| Source revision | n/a (not from the Hub) |", "| Hardware | CPU",
                "| Training time | ", "| Peak memory | ", "## Limitations", "local folder"):
        assert row in text, row
    usage = text[text.index(USAGE_START):text.index(USAGE_END)]
    assert "<user>/<model>" in usage and "hftl.load(\"<folder>\")" in usage


def test_adapter_card_with_hub_base_chain_and_study(tmp_path):
    info = {
        "task": "text_classification", "library": "transformers", "is_adapter": True, "strategy": "lora",
        "base_model": "hf-hub:org/tiny-bert", "base_source": "hub", "base_revision": "v1.0", "base_commit": SHA,
        "base_pretrained": True, "label_names": ["neg", "pos"], "model_kwargs": {"trust_remote_code": False},
        "data": "org/reviews", "metrics": {"loss": 0.4, "accuracy": 0.875, "f1": 0.86},
        "strategy_info": {"strategy": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
                          "target_modules": 4, "trainable_params": 1234, "total_params": 99999,
                          "lr_groups": [{"group": "lora+head", "lr": 0.001, "params": 1234}]},
        "chain": "masked_lm (finetune) of `org/tiny-bert` on `notes.txt` (perplexity 8.3)",
        "study": "| arm | accuracy |\n|---|---|\n| lora | 0.87 |\n\nVerdicts: lora: positive transfer",
        "model_name": "reviews-lora", "train_seconds": 12.5, "peak_memory": "900 MiB",
    }
    card = round_trip(render_card(info), tmp_path)
    data = card.data
    assert (data.library_name, data.pipeline_tag) == ("peft", "text-classification")
    assert (data.base_model, data.base_model_relation) == ("org/tiny-bert", "adapter")  # hf-hub: prefix dropped
    assert data.datasets == ["org/reviews"] and data.license == "unknown"
    assert {"lora", "peft", "hftl"} <= set(data.tags)
    assert [r.metric_type for r in data.eval_results] == ["accuracy", "f1"]  # loss is not a model-index metric
    text = card.text
    for fact in ("`v1.0`, commit `" + SHA + "`", "rank 8, alpha 16, dropout 0.1", "1234 of 99999",
                 "| Steps before this one | masked_lm (finetune)", "## Transfer study", "positive transfer",
                 "| Training time | 12.5 s |", "| Peak memory | 900 MiB |", "the whole backbone (LoRA"):
        assert fact in text, fact
    usage = text[text.index(USAGE_START):text.index(USAGE_END)]
    assert f'AutoModelForSequenceClassification.from_pretrained("org/tiny-bert", revision="{SHA}", num_labels=2)' \
        in usage
    assert 'PeftModel.from_pretrained(base, "<user>/<model>")' in usage


def test_base_model_followed_through_a_chain_of_local_outputs(tmp_path):
    adapted = tmp_path / "adapted"  # e.g. a masked-LM adaptation run of a Hub model, used as the start
    adapted.mkdir()
    (adapted / "hftl.json").write_text(json.dumps({"base_model": "org/bert", "base_source": "hub",
                                                   "base_commit": SHA, "task": "masked_lm"}))
    card = render_card({"task": "text_classification", "library": "transformers", "base_model": str(adapted),
                        "base_source": "local", "base_pretrained": True, "metrics": {"accuracy": 0.9}})
    assert (card.data.base_model, card.data.base_model_relation) == ("org/bert", "finetune")


def test_validate_metadata_names_what_the_hub_would_reject():
    good = render_card({"task": "image_classification", "library": "timm", "metrics": {"accuracy": 0.5},
                        "base_model": "timm/resnet18.a1_in1k", "base_source": "hub"}).data.to_dict()
    assert validate_metadata(good) == []
    cases = {
        "license": {"license": "Apache 2.0"},
        "license 'other' needs license_name": {"license": "other"},
        "pipeline_tag": {"pipeline_tag": "classification"},
        "library_name": {"library_name": "My Library"},
        "base_model ": {"base_model": "/home/me/model"},
        "base_model '": {"base_model": "https://huggingface.co/org/x"},
        "base_model [": {"base_model": ["org/a", "timm:resnet18"]},
        "base_model_relation": {"base_model_relation": "distilled"},
        "base_model_relation is set": {"base_model": None, "base_model_relation": "finetune"},
        "tags": {"tags": "hftl"},
        "metrics": {"metrics": [1, 2]},
        "datasets": {"datasets": ["./my_data"]},
        "model-index": {"model-index": [{"results": [{"metrics": [{"value": 1}]}]}]},
    }
    for field, change in cases.items():
        problems = validate_metadata({**good, **change})
        assert len(problems) == 1 and problems[0].startswith(field), (field, problems)
    assert validate_metadata({**good, "license": "other", "license_name": "my-license"}) == []
    with pytest.raises(HubError, match="license 'Apache 2.0'.*; tags must be a list"):
        check_metadata({**good, "license": "Apache 2.0", "tags": "hftl"})


def test_card_for_repo_rewrites_usage_and_checks_metadata():
    card = render_card({"task": "image_classification", "library": "timm", "metrics": {"accuracy": 0.5},
                        "model_name": "local-name"})
    text = card_for_repo(str(card), "me/digits", revision="dev", kind="timm", meta={"task": "image_classification"})
    pushed = ModelCard(text)
    assert pushed.data.model_name == "me/digits".split("/")[1]
    code = text[text.index(USAGE_START):text.index(USAGE_END)]
    assert 'timm.create_model("hf-hub:me/digits@dev", pretrained=True)' in code and "<user>/<model>" not in code
    assert pushed.data.to_dict()["license"] == "apache-2.0"  # own weights (random init): the default

    merged = ModelCard(card_for_repo(str(render_card({
        "task": "image_classification", "library": "timm", "is_adapter": True, "metrics": {},
        "base_model": "org/vit", "base_source": "hub", "base_pretrained": True})), "me/merged", kind="timm",
        meta={"library": "timm", "task": "image_classification"}, merged=True))
    assert (merged.data.library_name, merged.data.base_model_relation) == ("timm", "finetune")
    assert "merged-lora" in merged.data.tags and "peft" not in merged.data.tags

    with pytest.raises(HubError, match="license 'nope'"):
        card_for_repo(str(card), "me/digits", license="nope")
    assert ModelCard(card_for_repo(str(card), "me/digits", license="mit")).data.license == "mit"
    bad = str(card).replace("tags:\n- hftl\n- transfer-learning\n- finetune\n- timm", "tags: hftl")
    assert "tags: hftl" in bad
    with pytest.raises(HubError, match="tags must be a list"):
        card_for_repo(bad, "me/digits")
    with pytest.raises(HubError, match="cannot be read as Hub metadata"):
        card_for_repo("---\n- just\n- a list\n---\n# card\n", "me/digits")


def test_study_section_keeps_the_usage_block_rewritable(tmp_path):
    from hftl.study import add_study_to_card

    path = tmp_path / "README.md"
    render_card({"task": "image_classification", "library": "timm", "metrics": {"accuracy": 0.5}}).save(path)
    add_study_to_card(path, "| arm | accuracy |\n|---|---|\n\nVerdicts: finetune: negative transfer")
    text = card_for_repo(path.read_text(), "me/studied", kind="timm")
    assert text.index("## Transfer study") < text.index("## How to use") < text.index("hf-hub:me/studied")


@pytest.mark.parametrize("library, task", [("timm", "image_classification"), ("transformers", "text_classification"),
                                           ("transformers", "causal_lm"), ("transformers", "masked_lm")])
@pytest.mark.parametrize("adapter", [False, True])
@pytest.mark.parametrize("revision", [None, "dev"])
def test_usage_snippets_are_valid_python(library, task, adapter, revision):
    meta = {"base_model": "org/base", "base_source": "hub", "base_commit": SHA, "label_names": ["a", "b"],
            "model_kwargs": {"image_size": 32, "drop_path_rate": 0.1}}
    code = usage_snippet(library, task, "me/model", adapter, revision, meta)
    compile(code, "snippet", "exec")
    assert ('revision="dev"' in code or "@dev" in code) == bool(revision)
    if adapter and library == "timm":
        assert f'timm.create_model("hf-hub:org/base@{SHA}", pretrained=True, num_classes=2, drop_path_rate=0.1)' \
            in code
