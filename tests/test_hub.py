"""Sharing on the Hub: push every artifact kind, pull it back by id, and get the same predictions.

Everything runs against ``tests/hub_server.py``: the real ``huggingface_hub`` client (and timm,
transformers, peft on top of it) talking HTTP to a server on 127.0.0.1, with HF_ENDPOINT pointing
at it (set by conftest before any HF import). Nothing leaves the machine.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_overrides
from hub_server import FakeHub, fake_hub, start_fake_hub  # noqa: F401  (fake_hub is a fixture)
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError

import hftl
from hftl.cli import main as cli
from hftl.errors import HubError, ModelNotFoundError
from hftl.hub import push
from hftl.refs import resolve_model

USER = "fake-user"
X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture
def hub(fake_hub: FakeHub, monkeypatch) -> FakeHub:  # noqa: F811
    """A running fake Hub and a write token in HF_TOKEN (as a user would have it)."""
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    return fake_hub


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("timm") / "tiny-resnet"
    hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 1}))
    assert any((out / "checkpoints").rglob("*.pkl")) and any((out / "checkpoints").rglob("optimizer.bin"))
    return out


WORDS = ["great", "good", "lovely", "awful", "bad", "dull", "the", "film", "was", "a", "plot", "really"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A tiny BERT (built in code, with its tokenizer) fine-tuned on a CSV of reviews."""
    import pandas as pd
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("text")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    tokenizer = BertTokenizerFast(str(vocab))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    texts = [f"the film was {w}" for w in WORDS[:6]] * 8
    labels = ["pos" if any(w in t for w in ("great", "good", "lovely")) else "neg" for t in texts]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(root / "reviews.csv", index=False)
    out = root / "tiny-bert-clf"
    hftl.train(None, [
        "task=text_classification", f"model.id={root / 'bert'}", f"data.id={root / 'reviews.csv'}",
        "data.max_length=16", "train.epochs=1", "train.global_batch_size=16", "train.per_device_batch_size=16",
        "train.lr=0.003", "train.progress=false", f"output_dir={out}",
    ])
    return out


def pngs(folder: Path, n: int = 3) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    paths = []
    for i in range(n):
        pixels = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        paths.append(folder / f"img{i}.png")
    return paths


def usage_code(readme: str) -> str:
    """The python block of a card's "How to use" section."""
    section = readme[readme.index("## How to use"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_usage(repo_id: str, revision: str | None = None) -> dict:
    """Download the pushed card by id and run its "how to use" code, as a reader would."""
    readme = Path(hf_hub_download(repo_id, "README.md", revision=revision)).read_text()
    namespace: dict = {}
    exec(compile(usage_code(readme), f"{repo_id}/README.md", "exec"), namespace)
    return namespace


def logits(model, x=X) -> torch.Tensor:
    with torch.inference_mode():
        return model({"pixel_values": x}) if hasattr(model, "label_names") else model(x)


def no_requests(hub: FakeHub) -> bool:
    return not hub.requests


# --------------------------------------------------------------------------- the three artifact kinds

def test_timm_output_goes_up_in_timm_layout_and_predicts_the_same(hub, timm_run, tmp_path):
    url = push(timm_run, f"{USER}/tiny-resnet")
    assert url.startswith(hub.endpoint) and "/commit/" in url
    files = set(hub.list_files(f"{USER}/tiny-resnet"))
    assert files == {".gitattributes", "README.md", "config.json", "model.safetensors", "hftl.json",
                     "hftl_config.yaml", "metrics.json", "log.jsonl"}  # no checkpoints/, no pickles
    assert not any(name.endswith((".pkl", ".bin")) or name.startswith("checkpoints") for name in files)

    local = hftl.load(timm_run)
    import timm

    pulled = timm.create_model(f"hf-hub:{USER}/tiny-resnet", pretrained=True).eval()
    assert torch.equal(logits(pulled), logits(local))
    images = pngs(tmp_path / "images")
    assert hftl.predict(f"{USER}/tiny-resnet", images) == hftl.predict(timm_run, images)

    # The card's own code runs against the Hub and loads the same model, with the label names.
    ns = run_usage(f"{USER}/tiny-resnet")
    assert torch.equal(logits(ns["model"]), logits(local))
    assert ns["labels"] == local.label_names
    card = ModelCard.load(hf_hub_download(f"{USER}/tiny-resnet", "README.md"))
    final = json.loads((timm_run / "metrics.json").read_text())["final"]
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == \
        {k: final[k] for k in ("accuracy", "f1")}
    assert card.data.model_name == "tiny-resnet"


def test_transformers_output_loads_with_auto_classes_and_predicts_the_same(hub, text_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    push(text_run, f"{USER}/tiny-bert-clf")
    files = set(hub.list_files(f"{USER}/tiny-bert-clf"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
            "metrics.json"} <= files
    assert not any(f.startswith("checkpoints") or f.endswith((".bin", ".pkl")) for f in files)

    local = hftl.load(text_run)
    texts = ["the film was great", "a really dull plot", "bad"]
    batch = local.encode_texts(texts)
    model = AutoModelForSequenceClassification.from_pretrained(f"{USER}/tiny-bert-clf").eval()
    tokenizer = AutoTokenizer.from_pretrained(f"{USER}/tiny-bert-clf")
    assert tokenizer(texts)["input_ids"] == local.tokenizer(texts)["input_ids"]
    with torch.inference_mode():
        assert torch.equal(model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits, local(batch))
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == local.label_names
    assert hftl.predict(f"{USER}/tiny-bert-clf", texts) == hftl.predict(text_run, texts)

    ns = run_usage(f"{USER}/tiny-bert-clf")
    assert ns["tokenizer"](texts)["input_ids"] == local.tokenizer(texts)["input_ids"]
    with torch.inference_mode():
        assert torch.equal(ns["model"](**ns["tokenizer"](texts, padding=True, return_tensors="pt")).logits,
                           model(**tokenizer(texts, padding=True, return_tensors="pt")).logits)
    card = ModelCard.load(hf_hub_download(f"{USER}/tiny-bert-clf", "README.md"))
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"


def _save_timm_source(folder: Path, seed: int) -> Path:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    save_for_hf(timm.create_model("test_resnet", num_classes=7), str(folder), safe_serialization=True)
    return folder


def test_lora_adapter_from_a_pinned_hub_base_round_trips(hub, pretrained_folder, tmp_path):
    api = HfApi()
    base_id = api.create_repo(f"{USER}/tiny-base").repo_id
    v1 = api.upload_folder(folder_path=pretrained_folder, repo_id=base_id).oid
    # main moves on after the run pinned v1: the adapter must still be rebuilt on v1.
    v2 = api.upload_folder(folder_path=_save_timm_source(tmp_path / "v2", seed=1), repo_id=base_id).oid
    assert v1 != v2 and hub.head_commit(base_id) == v2

    out = tmp_path / "tiny-lora"
    hftl.train(None, tiny_train_overrides(out, **{
        "model.id": base_id, "model.revision": v1, "strategy.name": "lora", "strategy.lora_r": 4,
        "strategy.merge_lora": "true", "train.epochs": 1}))
    meta = json.loads((out / "hftl.json").read_text())
    assert meta["base_commit"] == v1 and meta["base_revision"] == v1

    commit_url = push(out, f"{USER}/tiny-lora")
    files = set(hub.list_files(f"{USER}/tiny-lora"))
    assert {"adapter_config.json", "adapter_model.safetensors", "hftl.json", "README.md"} <= files
    assert "model.safetensors" not in files and not any(f.startswith(("merged/", "checkpoints/")) for f in files)
    card = ModelCard.load(hf_hub_download(f"{USER}/tiny-lora", "README.md"))
    assert (card.data.library_name, card.data.base_model, card.data.base_model_relation) == \
        ("peft", base_id, "adapter")
    assert v1 in card.text  # the source revision is recorded

    local = hftl.load(out)
    pinned = commit_url.rsplit("/", 1)[-1]
    assert torch.equal(logits(hftl.load(f"{USER}/tiny-lora", revision=pinned)), logits(local))
    ns = run_usage(f"{USER}/tiny-lora")  # hftl.load(id) and PeftModel.from_pretrained(timm base @v1, id)
    assert torch.equal(logits(ns["model"]), logits(local))
    assert torch.allclose(logits(ns["peft_model"]), logits(local), atol=1e-6)

    # The merged model, as an option: plain timm loads it, no peft needed.
    push(out, f"{USER}/tiny-lora-merged", merged=True)
    import timm

    merged = timm.create_model(f"hf-hub:{USER}/tiny-lora-merged", pretrained=True).eval()
    assert torch.allclose(logits(merged), logits(local), atol=1e-5)
    card = ModelCard.load(hf_hub_download(f"{USER}/tiny-lora-merged", "README.md"))
    assert (card.data.library_name, card.data.base_model_relation) == ("timm", "finetune")
    assert torch.allclose(logits(run_usage(f"{USER}/tiny-lora-merged")["model"]), logits(local), atol=1e-5)


def test_study_folder_pushes_the_winner_with_its_report_and_plots(hub, timm_run, tmp_path):
    # The layout hftl.study writes: study.json, report.md, plots, model/ (the winner), records/, runs/.
    study = tmp_path / "study"
    shutil.copytree(timm_run, study / "model")
    (study / "study.json").write_text(json.dumps({"arms": ["scratch", "finetune"]}))
    (study / "report.md").write_text("# Transfer study\n\n![metric by arm](metric_by_arm.png)\n")
    (study / "metric_by_arm.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (study / "records").mkdir()
    (study / "records" / "finetune__b1__fold0.json").write_text("{}")
    (study / "runs" / "scratch" / "fold0").mkdir(parents=True)
    (study / "runs" / "scratch" / "fold0" / "log.jsonl").write_text("{}\n")
    push(study, f"{USER}/study-winner")
    files = set(hub.list_files(f"{USER}/study-winner"))
    assert {"model.safetensors", "config.json", "README.md", "study/report.md", "study/study.json",
            "study/metric_by_arm.png"} <= files
    assert not any(f.startswith(("records/", "runs/", "checkpoints/", "model/")) for f in files)
    assert hub.read_file(f"{USER}/study-winner", "study/metric_by_arm.png") == \
        (study / "metric_by_arm.png").read_bytes()

    # Pushing a plain run over it leaves no stale study files or weights of the other run behind.
    push(timm_run, f"{USER}/study-winner")
    assert not any(f.startswith("study/") for f in hub.list_files(f"{USER}/study-winner"))


# ------------------------------------------------------------------------ revisions, PRs, private

def test_branch_pull_request_and_private_repo(hub, timm_run, capsys):
    import timm

    repo = f"{USER}/branches"
    assert cli(["push", str(timm_run), "--repo-id", repo, "--revision", "dev"]) == 0
    assert "/commit/" in capsys.readouterr().out
    assert "model.safetensors" not in hub.list_files(repo)  # main untouched
    assert "model.safetensors" in hub.list_files(repo, revision="dev")
    local = logits(hftl.load(timm_run))
    assert torch.equal(logits(timm.create_model(f"hf-hub:{repo}@dev", pretrained=True).eval()), local)
    assert torch.equal(logits(hftl.load(repo, revision="dev")), local)
    readme = hub.read_file(repo, "README.md", revision="dev").decode()
    assert f"hf-hub:{repo}@dev" in usage_code(readme)
    assert torch.equal(logits(run_usage(repo, revision="dev")["model"]), local)

    assert cli(["push", str(timm_run), "--repo-id", repo, "--create-pr"]) == 0
    assert capsys.readouterr().out.strip() == f"{hub.endpoint}/{repo}/discussions/1"
    assert "model.safetensors" not in hub.list_files(repo)
    assert "model.safetensors" in hub.list_files(repo, revision="refs/pr/1")

    private = f"{USER}/private-model"
    push(timm_run, private, private=True)
    assert hub.get_repo(private).private
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(private)
    assert torch.equal(logits(hftl.load(private)), local)  # the owner (HF_TOKEN) can pull it
    # --private into an existing public repo would publish what the user meant to keep private.
    commits = len(hub.commit_history(repo))
    with pytest.raises(HubError, match="public"):
        push(timm_run, repo, private=True)
    assert len(hub.commit_history(repo)) == commits


# -------------------------------------------------------------------------- pull: pins, cache, offline

def test_pinned_pull_through_the_cache_then_offline_without_a_request(hub, timm_run, tmp_path):
    from safetensors.torch import load_file, save_file

    repo = f"{USER}/versions"
    first = push(timm_run, repo).rsplit("/", 1)[-1]
    second_run = tmp_path / "second"
    shutil.copytree(timm_run, second_run, ignore=shutil.ignore_patterns("checkpoints"))
    weights = load_file(second_run / "model.safetensors")
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()},
              second_run / "model.safetensors")
    second = push(second_run, repo).rsplit("/", 1)[-1]
    assert first != second and len(hub.commit_history(repo)) == 3

    v1, v2 = logits(hftl.load(timm_run)), logits(hftl.load(second_run))
    assert not torch.equal(v1, v2)
    assert torch.equal(logits(hftl.load(repo, revision=first)), v1)  # pinned
    assert torch.equal(logits(hftl.load(repo)), v2)  # main
    assert resolve_model(repo, revision=first).path.name == first  # what model.revision in a config does
    assert hub.requests_of("resolve") and constants.ENDPOINT == hub.endpoint  # HF_ENDPOINT was honoured

    hub.stop()
    assert constants.HF_HUB_OFFLINE  # conftest's HF_HUB_OFFLINE=1 is back in force
    with start_fake_hub(client_online=False) as watcher:  # listens on the same endpoint, counts requests
        assert torch.equal(logits(hftl.load(repo, revision=first)), v1)
        assert torch.equal(logits(hftl.load(repo)), v2)
        with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
            hftl.load(f"{USER}/never-downloaded")
        assert watcher.requests == []


# ----------------------------------------------------------------------------------------- the token

def test_token_never_appears_in_outputs_logs_or_console(hub, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "pushed-by-training"
    hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 1, "hub.push": "true",
                                                  "hub.repo_id": f"{USER}/trained-and-pushed"}))
    assert "model.safetensors" in hub.list_files(f"{USER}/trained-and-pushed")
    assert all(r.authenticated for r in hub.requests_of("commit"))  # the token was used...
    assert cli(["push", str(out), "--repo-id", f"{USER}/again", "--private"]) == 0
    hub.fail_next("commit", status=500, message="boom")
    with pytest.raises(HubError) as failed:
        push(out, f"{USER}/fails-once")

    token = hub.token.encode()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and not [p for p in files if token in p.read_bytes()]  # ...but written nowhere
    for name in hub.list_files(f"{USER}/trained-and-pushed"):
        assert token not in hub.read_file(f"{USER}/trained-and-pushed", name)
    captured = capfd.readouterr()
    assert hub.token not in captured.out + captured.err
    assert hub.token not in caplog.text and hub.token not in str(failed.value)
    assert not [r for r in caplog.records if hub.token in r.getMessage()]


def test_token_from_the_login_cache(hub, timm_run, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    cached = tmp_path / "token"
    cached.write_text(hub.token)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(cached))
    push(timm_run, f"{USER}/from-login")
    assert "model.safetensors" in hub.list_files(f"{USER}/from-login")


# ----------------------------------------------------------------------------------------- bad input

def test_no_token_is_a_clear_error_before_any_request(hub, timm_run, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    with pytest.raises(HubError, match="No Hugging Face token.*HF_TOKEN"):
        push(timm_run, f"{USER}/nope")
    assert cli(["push", str(timm_run), "--repo-id", f"{USER}/nope"]) == 2
    assert "No Hugging Face token" in capsys.readouterr().err
    # hub.push=true fails before the training, not after it.
    out = tmp_path / "never-trained"
    with pytest.raises(HubError, match="No Hugging Face token"):
        hftl.train(None, tiny_train_overrides(out, **{"hub.push": "true", "hub.repo_id": f"{USER}/nope"}))
    assert not out.exists()
    assert no_requests(hub)


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "user/bad--name", "user/-dash", "user/with space",
                                     "hf-hub:user/name", ""])
def test_malformed_repo_id(hub, timm_run, repo_id):
    with pytest.raises(HubError, match="repo id|namespace"):
        push(timm_run, repo_id)
    assert no_requests(hub)


def test_server_failing_mid_upload_then_pushing_again(hub, timm_run):
    repo = f"{USER}/flaky"
    hub.fail_next("commit", status=500, message="Internal Error")
    with pytest.raises(HubError, match=r"HTTP 500.*run the push again"):
        push(timm_run, repo)
    assert hub.list_files(repo) == [".gitattributes"]  # nothing half-committed
    push(timm_run, repo)
    assert len(hub.commit_history(repo)) == 2  # initial + one upload
    assert len(hub.requests_of("lfs_upload", status=200)) == 1  # the weights went up once

    # An LFS PUT refused mid-way (not retried by the client), then the same again.
    hub.fail_next("lfs_upload", status=403, message="Request has expired")
    with pytest.raises(HubError, match="run the push again"):
        push(timm_run, f"{USER}/flaky-lfs")
    assert hub.list_files(f"{USER}/flaky-lfs") == [".gitattributes"]
    push(timm_run, f"{USER}/flaky-lfs")
    files = hub.list_files(f"{USER}/flaky-lfs")
    assert len(files) == len(set(files)) and "model.safetensors" in files
    assert len(hub.commit_history(f"{USER}/flaky-lfs")) == 2

    push(timm_run, repo)  # nothing changed: no new commit, nothing uploaded twice
    assert len(hub.commit_history(repo)) == 2


def test_push_while_offline_or_unreachable(hub, timm_run, monkeypatch):
    hub.stop()
    assert constants.HF_HUB_OFFLINE  # HF_HUB_OFFLINE=1 (conftest) is in force again
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        push(timm_run, f"{USER}/offline")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online, but nothing listens on HF_ENDPOINT
    with pytest.raises(HubError, match="could not be reached"):
        push(timm_run, f"{USER}/unreachable")


def test_output_folder_without_weights(hub, timm_run, tmp_path):
    no_weights = tmp_path / "no-weights"
    shutil.copytree(timm_run, no_weights, ignore=shutil.ignore_patterns("*.safetensors", "checkpoints"))
    with pytest.raises(HubError, match="no model weights"):
        push(no_weights, f"{USER}/x")
    pickled = tmp_path / "pickled"
    shutil.copytree(no_weights, pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(HubError, match="only as pickle"):
        push(pickled, f"{USER}/x")
    with pytest.raises(HubError, match="does not exist"):
        push(tmp_path / "missing", f"{USER}/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="no model weights"):
        push(tmp_path / "empty", f"{USER}/x")
    with pytest.raises(HubError, match="merged"):
        push(timm_run, f"{USER}/x", merged=True)
    assert no_requests(hub)


@pytest.mark.parametrize("field, bad", [
    ("license", "apache2"),
    ("base_model", "./outputs/my-local-model"),
    ("base_model", "hf-hub:timm/resnet18.a1_in1k"),
    ("tags", "hftl"),
    ("pipeline_tag", "image-classifier"),
    ("datasets", ["builtin:digits"]),
])
def test_card_metadata_the_hub_would_reject(hub, timm_run, tmp_path, field, bad):
    folder = tmp_path / "run"
    shutil.copytree(timm_run, folder, ignore=shutil.ignore_patterns("checkpoints"))
    card = ModelCard.load(folder / "README.md")
    setattr(card.data, field, bad)
    card.save(folder / "README.md")
    with pytest.raises(HubError, match=f"would be rejected by the Hub: {field}"):
        push(folder, f"{USER}/bad-card")
    assert no_requests(hub)


def test_invalid_license_option(hub, timm_run):
    with pytest.raises(HubError, match="license 'Apache 2'"):
        push(timm_run, f"{USER}/bad-license", license="Apache 2")
    assert no_requests(hub)
    push(timm_run, f"{USER}/mit-license", license="mit")
    card = ModelCard.load(hf_hub_download(f"{USER}/mit-license", "README.md"))
    assert card.data.license == "mit"
