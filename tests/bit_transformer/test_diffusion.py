"""Denoising objective (masked bit diffusion): config rules, no leak, the bound, the sampler."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from bit_transformer.bits import parity_errors, text_to_bits
from bit_transformer.config import RunConfig
from bit_transformer.data import Corpus
from bit_transformer.diffusion import MASK, corrupt, mask_rate, nelbo, parity_masked, sample_times
from bit_transformer.diffusion_generate import generate_diffusion
from bit_transformer.evaluate import evaluate_bits
from bit_transformer.factory import build_model
from bit_transformer.model import BitTransformerLM, ModelOutput
from bit_transformer.train_loss import denoise_batch_loss
from bit_transformer.training import Trainer

SEQ = 72  # 8 bytes per window


def denoise_config(**model) -> RunConfig:
    m = {"layers": 1, "d_model": 32, "nhead": 2, "max_seq_len": SEQ, "dropout": 0.0, "causal": False, **model}
    return RunConfig.model_validate({"model": m, "train": {"objective": "denoise", "amp": "none", "device": "cpu"}})


class Uniform(nn.Module):
    """Says nothing: P(bit = 1) = 1/2 everywhere, so each masked data bit costs exactly ln 2."""

    def __init__(self):
        super().__init__()
        self.cfg = denoise_config().model
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, bits, return_telemetry=False):
        return ModelOutput(torch.zeros(*bits.shape, 2) + 0 * self.anchor, torch.zeros(()), None)


@pytest.mark.parametrize(("patch", "fields"), [
    ({"model": {"causal": False}}, ("train.objective='next_bit'", "model.causal=true")),
    ({"train": {"objective": "denoise"}}, ("train.objective='denoise'", "model.causal=false")),
    ({"model": {"causal": False}, "train": {"objective": "denoise", "compress_prob": 0.5}}, ("compress_prob",)),
    ({"model": {"causal": False, "max_seq_len": 100}, "train": {"objective": "denoise"}}, ("max_seq_len",)),
    ({"model": {"causal": False, "arch": "framed"}, "train": {"objective": "denoise"}}, ("arch='framed'", "causal")),
])
def test_mismatched_objective_and_attention_are_refused_naming_both_fields(patch, fields):
    with pytest.raises(ValidationError) as err:
        RunConfig.model_validate(patch)
    assert all(f in str(err.value) for f in fields)


def test_the_model_input_never_carries_a_masked_bits_clean_value():
    clean = torch.from_numpy(text_to_bits("denoising!" * 2)[:SEQ].astype("int64"))[None].repeat(4, 1)
    t = torch.tensor([0.2, 0.5, 0.8, 1.0])
    noisy, masked = corrupt(clean, t, generator=torch.Generator().manual_seed(3))
    flipped = clean.clone()
    flipped[masked] ^= 1  # change every masked data bit's clean value
    noisy2, masked2 = corrupt(flipped, t, generator=torch.Generator().manual_seed(3))
    assert masked.any() and torch.equal(masked, masked2) and torch.equal(noisy, noisy2)
    model = build_model(denoise_config().model).eval()
    torch.testing.assert_close(model(noisy).logits, model(noisy2).logits, rtol=0, atol=0)
    # a parity bit is hidden whenever a data bit of its frame is: it would give away their xor
    assert torch.equal(noisy[:, 8::9] == MASK, masked.reshape(4, -1, 9)[..., :8].any(-1))
    assert not (masked[:, 8::9]).any()  # and parity is never scored


def test_masking_follows_the_schedule():
    clean = torch.zeros(2000, 90, dtype=torch.long)
    for schedule in ("linear", "cosine", "exponential"):
        t = torch.full((2000,), 0.3)
        _, masked = corrupt(clean, t, schedule=schedule, generator=torch.Generator().manual_seed(0))
        share = masked[:, torch.arange(90) % 9 < 8].float().mean()
        assert abs(float(share) - float(mask_rate(torch.tensor(0.3), schedule))) < 0.01


def test_the_bound_of_a_uniform_model_is_eight_bits_per_byte_for_every_schedule():
    # E_t[w(t) * masked(t)] * ln 2 = 64 data bits * ln 2 per 8-byte window, whatever the schedule
    clean = torch.randint(0, 2, (3000, SEQ), generator=torch.Generator().manual_seed(0))
    for schedule in ("linear", "cosine", "exponential"):
        per_row = nelbo(Uniform(), clean, schedule=schedule, generator=torch.Generator().manual_seed(1))[0]
        bpb = float(per_row.detach().mean()) / 8 / math.log(2)
        assert abs(bpb - 8.0) < 0.25, schedule


def test_evaluate_reports_the_bound_and_says_so():
    report = evaluate_bits(Uniform(), text_to_bits("the bound of a model that knows nothing " * 8),
                           compressors=False, denoise_samples=64)
    assert report.objective == "denoise" and report.bound is True
    assert abs(report.bits_per_byte - 8.0) < 0.3 and report.parity_bits_per_byte == 0.0
    assert abs(sum(report.loss_by_phase) / math.log(2) - report.bits_per_byte) < 1e-6
    assert report.loss_by_phase[8] == 0.0  # parity is never scored


def _train_on(text: str, updates: int, seed: int = 0) -> BitTransformerLM:
    torch.manual_seed(seed)
    cfg = denoise_config()
    model = build_model(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    bits = torch.from_numpy(text_to_bits(text).astype("int64"))
    windows = bits[: bits.numel() // SEQ * SEQ].reshape(-1, SEQ)
    for step in range(updates):
        batch = windows[torch.arange(16) + step * 16 % max(1, len(windows) - 16)][:16]
        loss = denoise_batch_loss(model, batch, cfg=cfg.train, ponder_weight=0.0, precision="fp32").loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_a_constant_stream_is_learned_to_near_zero_bits():
    model = _train_on("a" * 4000, updates=150)
    report = evaluate_bits(model, text_to_bits("a" * 400), compressors=False, denoise_samples=16)
    assert report.bits_per_byte < 0.2  # untrained: about 8


def test_the_sampler_keeps_fixed_bits_and_parity_and_repeats_with_a_seed():
    model = build_model(denoise_config().model).eval()
    a = generate_diffusion(model, "hi", max_bytes=5, steps=6, seed=11)
    b = generate_diffusion(model, "hi", max_bytes=5, steps=6, seed=11)
    assert a.text == b.text and a.parity_ok and a.new_bytes == 5 and a.full_text.startswith("hi")
    # infilling: every byte ASCII (its top bit fixed to 0) and byte 3 fixed to 'Z'
    fixed = {9 * k: 0 for k in range(6)} | {9 * 3 + j: b for j, b in enumerate(text_to_bits("Z")[:8].tolist())}
    c = generate_diffusion(model, "", max_bytes=6, steps=4, seed=2, fixed_bits=fixed)
    assert c.parity_ok and len(c.text) == 6 and c.text[3] == "Z" and all(ord(ch) < 128 for ch in c.text)
    with pytest.raises(ValueError, match="one window"):
        generate_diffusion(model, "", max_bytes=9, steps=2)
    with pytest.raises(ValueError, match="causal"):
        generate_diffusion(build_model(RunConfig().model), "", max_bytes=1)


def test_fixed_parity_decides_the_last_data_bit():
    model = build_model(denoise_config().model).eval()
    # fix the first 7 data bits of byte 0 and its parity to odd: the 8th bit must make the frame even
    fixed = {j: 0 for j in range(7)} | {8: 1}
    out = generate_diffusion(model, "", max_bytes=2, steps=3, seed=0, fixed_bits=fixed)
    bits = text_to_bits(out.full_text)
    assert out.parity_ok and bits[7] == 1 and not parity_errors(bits).any()


def test_trainer_runs_the_denoise_objective_and_its_validation_falls(tmp_path: Path):
    text = "to be or not to be, that is the question. " * 40
    tb, vb = text_to_bits(text[:1500]), text_to_bits(text[-300:])
    corpus = Corpus(train=tb, val=vb, source_id="t", content_hash="0", n_bytes=(len(tb) + len(vb)) // 9,
                    cache_hit=False, cache_path=Path("."))
    cfg = denoise_config().model_copy(deep=True)
    cfg.train = cfg.train.model_copy(update={"steps": 60, "batch_size": 8, "eval_every": 20, "lr": 3e-3,
                                             "save_every": 1000})
    events: list = []
    Trainer(cfg, tmp_path / "run", corpus=corpus, callback=lambda e, p: events.append((e, p))).fit()
    evals = [p for e, p in events if e == "eval"]
    losses = [getattr(p, "val_loss", None) if not isinstance(p, dict) else p.get("val_loss") for p in evals]
    assert len(losses) >= 3 and all(v is not None for v in losses)
    untrained = 8 * math.log(2) / 9  # nats per bit position of a model that knows nothing (parity is free)
    assert losses[-1] < losses[0] and losses[-1] < 0.85 * untrained


def test_parity_mask_shape():
    m = torch.zeros(1, 18, dtype=torch.bool)
    m[0, 10] = True
    assert parity_masked(m)[0].nonzero().flatten().tolist() == [17]
    assert sample_times(4).min() > 0 and sample_times(4).max() <= 1


@pytest.mark.parametrize("options", [
    {"reversible": True, "act": True}, {"checkpointing": True, "chunk_size": 18, "overlap": 9}, {"act": True},
], ids=["reversible-act", "checkpointing-chunked", "act"])
def test_denoising_works_with_the_memory_and_attention_options(options):
    cfg = denoise_config(layers=2, **options)
    model = build_model(cfg.model).train()
    clean = torch.randint(0, 2, (4, SEQ), generator=torch.Generator().manual_seed(0))
    parts = denoise_batch_loss(model, clean, cfg=cfg.train, ponder_weight=0.01, precision="fp32",
                               generator=torch.Generator().manual_seed(1))
    parts.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.efficient_backward = False  # the same computation with plain autograd
    denoise_batch_loss(model, clean, cfg=cfg.train, ponder_weight=0.01, precision="fp32",
                       generator=torch.Generator().manual_seed(1)).loss.backward()
    assert grads and "mask_emb.weight" in grads
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)


def test_a_denoising_model_scales_up_and_exports_to_int8(tmp_path: Path):
    from bit_transformer.quantization import export_int8, load_int8
    from bit_transformer.scale import scale_up

    model = _train_on("abcd" * 500, updates=20).eval()
    grown_model = scale_up(model, layers=2, d_model=48)[0]
    bits = torch.from_numpy(text_to_bits("abcdabcd").astype("int64"))[None]
    noisy, _ = corrupt(bits, torch.tensor([0.5]), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(grown_model.eval()(noisy).logits, model(noisy).logits, rtol=1e-4, atol=1e-4)
    export_int8(model, tmp_path / "q")
    q = load_int8(tmp_path / "q")[0]
    assert (q(noisy).logits.argmax(-1) == model(noisy).logits.argmax(-1)).float().mean() > 0.9
