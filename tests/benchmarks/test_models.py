"""The throughput reference and the FLOP counter: tiny shapes, real numbers."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.flops import attention_pairs, forward_flops, matmul_params, train_step_flops
from benchmarks.reference_model import ReferenceTransformer
from bit_transformer.attention import dense_chunk_mask
from bit_transformer.config import ModelConfig
from bit_transformer.factory import build_model


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"layers": 2, "d_model": 16, "nhead": 2, "max_seq_len": 36, "dropout": 0.0, **kw})


def test_reference_is_causal():
    torch.manual_seed(0)
    model = ReferenceTransformer.like(_cfg()).eval()
    bits = torch.randint(0, 2, (2, 36))
    changed = bits.clone()
    changed[:, 20:] = 1 - changed[:, 20:]  # flip every bit from position 20 on
    with torch.no_grad():
        a, b = model(bits), model(changed)
    assert a.shape == (2, 36, 2)
    torch.testing.assert_close(a[:, :20], b[:, :20])  # earlier positions never see the future
    assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-4  # and the flipped positions do change


def test_reference_mask_is_dense_and_additive():
    model = ReferenceTransformer(1, 8, 2, max_seq_len=10)
    mask = model.causal_mask
    assert mask.shape == (10, 10) and mask.dtype == torch.float32
    assert torch.equal(mask == 0, dense_chunk_mask(10, None, 0, True))  # 0 where allowed, -inf elsewhere
    assert torch.isinf(mask[0, 1]) and mask[0, 1] < 0


@pytest.mark.parametrize("kw", [{}, {"chunk_size": 9, "reversible": True, "checkpointing": True},
                                {"dim_feedforward": 24}])
def test_reference_parameter_count_equals_ours(kw):
    cfg = _cfg(**kw)
    assert ReferenceTransformer.like(cfg).num_parameters() == build_model(cfg).num_parameters()


def test_act_adds_only_the_halting_units():
    cfg = _cfg(act=True)
    extra = build_model(cfg).num_parameters() - ReferenceTransformer.like(cfg).num_parameters()
    assert extra == cfg.layers * (cfg.d_model + 1)


def test_reference_learns_like_a_language_model():
    # A constant stream is trivially predictable: a few AdamW steps must drive the loss well below ln 2.
    torch.manual_seed(0)
    model = ReferenceTransformer(1, 16, 2, max_seq_len=18)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    bits = torch.ones(4, 19, dtype=torch.long)
    for _ in range(30):
        loss = F.cross_entropy(model(bits[:, :-1]).reshape(-1, 2), bits[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_flops_match_a_hand_count():
    cfg = ModelConfig(layers=1, d_model=8, nhead=1, dim_feedforward=16, max_seq_len=9)
    # Matrices: qkv 8x24 + out 8x8 + fc1 8x16 + fc2 16x8 = 192 + 64 + 128 + 128 = 512, head 8x2 = 16.
    assert matmul_params(cfg) == 528
    # T=3 causal: pairs (0,0) (1,0) (1,1) (2,0) (2,1) (2,2) = 6; forward = 2*528*3 + 4*8*1*6 = 3168 + 192.
    assert attention_pairs(3) == 6
    assert forward_flops(cfg, 1, 3) == 3360
    assert train_step_flops(cfg, 2, 3) == 3 * 2 * 3360
    # ACT adds the halting projection (d x 1) per layer.
    assert matmul_params(cfg.model_copy(update={"act": True})) == 536


def test_attention_pairs_chunked_and_overlap():
    assert attention_pairs(4, chunk_size=2) == 3 + 3  # two causal 2x2 triangles
    assert attention_pairs(5, chunk_size=2) == 3 + 3 + 1  # the partial last chunk
    assert attention_pairs(4, chunk_size=2, overlap=1) == 3 + (2 * 1 + 3)  # the 2nd chunk also sees 1 key
    assert attention_pairs(4, causal=False) == 16
    for T, c, ov in [(10, 3, 0), (10, 4, 2), (7, 7, 0)]:  # agrees with the engine's reference mask
        assert attention_pairs(T, True, c, ov) == int(dense_chunk_mask(T, c, ov, True).sum())
    cfg = _cfg(max_seq_len=36, chunk_size=9)
    assert forward_flops(cfg, 1, 36) < forward_flops(cfg, 1, 36, chunked=False)
