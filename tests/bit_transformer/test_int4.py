"""INT4 export: the rule (packing, error bound), the artifact round trip, 4-bit QAT, the CLI, and the bits per
byte it costs on a trained tiny model."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from pydantic import ValidationError

from bit_transformer.checkpoint import load_model
from bit_transformer.cli import load_any_model, main
from bit_transformer.config import RunConfig
from bit_transformer.data import load_corpus
from bit_transformer.export import export_int8_checked
from bit_transformer.int4 import dequantize_groups, pack_nibbles, quantize_groups, unpack_nibbles
from bit_transformer.quantization import QATLinear, convert_qat, export_int8, prepare_qat
from bit_transformer.quantization_int4 import WEIGHTS, Int4Linear, export_int4, load_int4, quantize_int4
from bit_transformer.scale import scale_up
from bit_transformer.training import Trainer
from tests.bit_transformer.test_quantization import bits, logits, model_of, tiny


def test_pack_unpack_is_exact_two_codes_per_byte():
    q = torch.randint(0, 16, (5, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    packed = pack_nibbles(q)
    assert packed.shape == (5, 32) and packed.dtype == torch.uint8
    assert torch.equal(packed[:, 0], q[:, 0] | (q[:, 1] << 4))  # even code low nibble, odd code high
    assert torch.equal(unpack_nibbles(packed), q)
    with pytest.raises(ValueError, match="even number of columns"):
        pack_nibbles(q[:, :3])


@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_dequantize_error_is_at_most_half_a_step_per_group(symmetric):
    w = torch.randn(6, 64, generator=torch.Generator().manual_seed(2))
    w[1] *= 50  # rows with very different ranges
    w[2, :16] = 0.0  # an all-zero group
    w[3, 16:32] = w[3, 16:32].abs() + 1.0  # an all-positive group
    q, scale, zero = quantize_groups(w, 16, symmetric=symmetric)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.shape == zero.shape == (6, 4)
    assert scale[2, 0] == 1.0 and (dequantize_groups(q, scale, zero)[2, :16] == 0).all()
    err = (dequantize_groups(q, scale, zero) - w).abs().reshape(6, 4, 16)
    assert (err <= scale[..., None] / 2 * (1 + 1e-5)).all()
    assert err.max() > 0.1 * scale.min()  # it is 4-bit: the error is there
    if symmetric:
        assert (zero == 8).all()
    else:  # the full 16 levels are used: the group's max and min (with 0) land on 15 and 0
        assert (q.reshape(6, 4, 16).amax(-1)[[0, 1]] == 15).all() and (q.reshape(6, 4, 16).amin(-1)[[0, 1]] == 0).all()


def test_bad_group_size_names_the_field_and_the_fix():
    w = torch.randn(4, 96)
    with pytest.raises(ValueError, match=r"group_size \(64\) must divide in_features \(in_features 96\).*32"):
        quantize_groups(w, 64)
    with pytest.raises(ValueError, match="even number"):
        quantize_groups(w, 3)
    with pytest.raises(ValueError, match=r"stack.blocks.0.attn.qkv: in_features 32"):
        quantize_int4(model_of(tiny()), 64)
    with pytest.raises(ValidationError, match=r"train.int4_group_size \(48\) must be even and divide model.d_model"):
        RunConfig.model_validate({"model": {"d_model": 64}, "train": {"quantization": "int4", "int4_group_size": 48}})
    with pytest.raises(ValidationError, match="qat=true needs quantization='int8' or 'int4'"):
        RunConfig.model_validate({"train": {"qat": True}})


def test_artifact_round_trip_gives_the_in_memory_model_and_any_loader_reads_it(tmp_path):
    model, x = model_of(tiny()), bits()
    info = export_int4(model, tmp_path / "a", group_size=16)
    assert (info.bits, info.group_size, info.quantized_linears) == (4, 16, 8)
    assert info.int4_params == 2 * (3 * 32 * 32 + 32 * 32 + 2 * 32 * 64)  # qkv, out, up, down per block
    tensors = safetensors.torch.load_file(str(tmp_path / "a" / WEIGHTS))
    qkv = "stack.blocks.0.attn.qkv.weight"
    assert tensors[qkv + ".int4"].shape == (96, 16) and tensors[qkv + ".int4"].dtype == torch.uint8
    assert tensors[qkv + ".scale"].shape == tensors[qkv + ".zero_point"].shape == (96, 2)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["format"] == "bit-transformer-int4"

    in_memory = logits(quantize_int4(model, 16), x)
    for path in (tmp_path / "a", tmp_path / "a" / WEIGHTS):  # the directory, or the weights file alone
        loaded, _ = load_any_model(str(path))
        assert isinstance(loaded.stack.blocks[1].mlp.down, Int4Linear)
        assert torch.equal(logits(loaded, x), in_memory)
    ref = logits(model, x)
    rel = ((in_memory - ref).abs().max() / ref.abs().max()).item()
    assert 0 < rel < 0.3, rel  # random O(1) weights at 4 bits: visible, bounded
    # An INT8 export may replace an INT4 one in place (and back); both load.
    export_int8(model, tmp_path / "a")
    assert not (tmp_path / "a" / WEIGHTS).exists()
    assert load_any_model(str(tmp_path / "a"))[0].int8_backend in ("dynamic", "reference")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int4(load_any_model(str(tmp_path / "a"))[0], 16)


def test_kernel_backend_matches_dequant_to_bf16_rounding(tmp_path):
    model, x = model_of(tiny()), bits()
    export_int4(model, tmp_path / "a", group_size=32)
    dq, kern = logits(load_int4(tmp_path / "a")[0], x), logits(load_int4(tmp_path / "a", backend="kernel")[0], x)
    assert 0 < ((kern - dq).abs().max() / dq.abs().max()).item() < 0.02
    export_int4(model, tmp_path / "b", group_size=16)
    with pytest.raises(ValueError, match=r"backend='kernel' needs group_size in \(32, 64, 128, 256\)"):
        load_int4(tmp_path / "b", backend="kernel")


def test_qat4_fake_quantizes_weights_only_and_converts_to_the_same_int4_model(tmp_path):
    torch.manual_seed(0)
    model, x = prepare_qat(model_of(tiny()), bits=4, group_size=16), bits()
    qkv = model.stack.blocks[0].attn.qkv
    assert isinstance(qkv, QATLinear) and qkv.bits == 4 and not qkv.quant_input
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).logits.reshape(-1, 2), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert qkv.weight.grad is not None and qkv.weight.grad.abs().sum() > 0  # straight-through gradient
    model.eval()
    export_int4(model, tmp_path / "qat", group_size=16)
    export_int4(convert_qat(model), tmp_path / "converted", group_size=16)
    a = safetensors.torch.load_file(str(tmp_path / "qat" / WEIGHTS))
    b = safetensors.torch.load_file(str(tmp_path / "converted" / WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith((".int4", ".zero_point")))
    loaded = load_int4(tmp_path / "qat")[0]
    assert (logits(loaded, x) - logits(model, x)).abs().max() < 1e-4  # the export is what QAT trained
    assert json.loads((tmp_path / "qat" / "config.json").read_text())["from_qat"] is True
    grown = scale_up(model, layers=3)[0]  # grows into the same target
    assert {(m.bits, m.group_size) for m in grown.modules() if isinstance(m, QATLinear)} == {(4, 16)}


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """A tiny model trained by the Trainer in fp32 and the same run with 4-bit QAT (100 updates each)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("int4")

    def cfg(**train):
        return RunConfig.model_validate({
            "model": {"layers": 2, "d_model": 32, "nhead": 4, "max_seq_len": 144, "dropout": 0.0},
            "train": {"batch_size": 8, "steps": 100, "eval_every": 100, "save_every": 100, "device": "cpu",
                      **train}, "data": {"source": "builtin"}})

    plain, qat = cfg(), cfg(quantization="int4", qat=True)
    corpus = load_corpus(plain.data, tmp / "cache")
    runs = {name: Trainer(c, tmp / name, corpus=corpus, metrics_log=False).fit() for name, c in
            (("fp32", plain), ("qat", qat))}
    return {name: load_model(r.checkpoint) for name, r in runs.items()}, corpus, tmp


def test_trained_int4_bits_per_byte_stay_close_to_fp32_and_qat4_exports_what_it_trained(trained_pair):
    (fp32, fp32_cfg), (qat, qat_cfg) = trained_pair[0]["fp32"], trained_pair[0]["qat"]
    corpus, tmp = trained_pair[1], trained_pair[2]
    assert isinstance(qat.stack.blocks[0].mlp.up, QATLinear) and qat.stack.blocks[0].mlp.up.bits == 4
    ptq = export_int8_checked(fp32, tmp / "ptq", config=fp32_cfg, val_bits=corpus.val, eval_bytes=2048, bits=4)
    assert ptq.bits == 4 and ptq.group_size == 32 and ptq.size_ratio > 2  # fp32 frame head: a third of it
    assert ptq.bpb_fp32 < 4.5  # it learned something (8.0 at the start)
    # measured +0.00 to +0.007 bits per byte on such models; 4 bits per weight cost little here
    assert abs(ptq.bpb_delta) < 0.03, ptq
    # a QAT-4 run exports int4 by default (train.quantization='int4'), and scores what it scored in training
    q = export_int8_checked(qat, tmp / "qat4", config=qat_cfg, val_bits=corpus.val, eval_bytes=2048)
    assert q.bits == 4 and q.from_qat and abs(q.bpb_delta) < 1e-4
    assert abs(q.bpb_int8 - ptq.bpb_fp32) < 0.05  # and about as good as the fp32 run


def test_cli_export_bits_4(trained_pair, capsys):
    tmp = trained_pair[2]
    ckpt = str(tmp / "fp32")
    assert main(["export-int8", "--checkpoint", ckpt, "--out", str(tmp / "cli4"), "--bits", "4", "--group_size", "16",
                 "--eval_bytes", "200", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["bits"], info["group_size"], info["eval_bytes"]) == (4, 16, 200) and info["int4_params"] > 0
    text = "the quick brown fox " * 10
    assert main(["evaluate", "--checkpoint", str(tmp / "cli4"), "--text", text, "--json", "--no_compressors"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_per_byte"] < 8
    assert main(["export-int8", "--checkpoint", ckpt, "--out", str(tmp / "bad"), "--bits", "4",
                 "--group_size", "48"]) == 2
    assert "group_size (48) must divide in_features" in capsys.readouterr().err
    assert main(["export-int8", "--checkpoint", ckpt, "--out", str(tmp / "bad"), "--group_size", "16"]) == 2
    assert "group_size applies to bits=4 only" in capsys.readouterr().err
