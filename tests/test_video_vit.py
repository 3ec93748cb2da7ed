"""The VideoMAE ViT: output shape, official fine-tuned key set and sizes, position table, attention by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from vidkd.models.base import MODELS, replace_head
from vidkd.models.video_vit import Attention, VideoViT, get_sinusoid_encoding_table, videomae_vit_b, videomae_vit_ti

BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight", "attn.proj.weight",
              "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
              "mlp.fc2.bias")


def tiny(**kw):
    return videomae_vit_ti(5, num_frames=4, crop_size=32, depth=2, **kw)


def test_output_shape_and_grid():
    model = tiny().eval()
    assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, 5)
    assert model.token_grid == model.grid == (2, 2, 2) and model.num_patches == 8
    assert model.head_name == "head" and model.head_module() is model.head
    replace_head(model, 7)
    assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 7)


def test_wrong_input_size_names_expected_shape():
    model = tiny()
    for shape in [(1, 3, 8, 32, 32), (1, 3, 4, 48, 48), (1, 3, 4, 32, 16)]:
        with pytest.raises(ValueError, match=r"\[B, 3, 4, 32, 32\]"):
            model(torch.randn(shape))
    with pytest.raises(ValueError, match="tubelet"):
        videomae_vit_ti(5, num_frames=5, crop_size=32)


def test_registered():
    assert {"videomae_vit_ti", "videomae_vit_s", "videomae_vit_b", "videomae_vit_l"} <= set(MODELS)
    assert MODELS["videomae_vit_ti"] is videomae_vit_ti


def test_stage_names_evenly_spaced_ending_at_last_block():
    def stages(depth):  # a narrow model: the stage names depend on the depth only
        return VideoViT(5, 4, 32, embed_dim=8, depth=depth, num_heads=1).stage_names

    assert stages(12) == ("blocks.2", "blocks.5", "blocks.8", "blocks.11")
    assert stages(24) == ("blocks.5", "blocks.11", "blocks.17", "blocks.23")
    assert stages(2) == ("blocks.0", "blocks.1")


def test_vit_b_matches_official_finetuned_state_dict():
    model = videomae_vit_b(num_classes=400)
    D, N = 768, 8 * 14 * 14
    expected = {"patch_embed.proj.weight": (D, 3, 2, 16, 16), "patch_embed.proj.bias": (D,)}
    block_shapes = [(D,), (D,), (D,), (D,), (3 * D, D), (D, D), (D,), (D,), (D,), (4 * D, D), (4 * D,), (D, 4 * D),
                    (D,)]
    for i in range(12):
        expected.update({f"blocks.{i}.{k}": s for k, s in zip(BLOCK_KEYS, block_shapes)})
    expected.update({"fc_norm.weight": (D,), "fc_norm.bias": (D,), "head.weight": (400, D), "head.bias": (400,)})
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert got["blocks.0.attn.qkv.weight"] == (2304, 768) and model.blocks[0].attn.qkv.bias is None
    assert model.pos_embed.shape == (1, N, D)
    # an official-style state dict loads strictly
    assert not model.load_state_dict({k: torch.zeros(s) for k, s in expected.items()}, strict=True).missing_keys
    # parameters, by hand:
    #   patch_embed   768*3*2*16*16 + 768                                   =  1,180,416
    #   per block     norm1 1,536 + q/v bias 1,536 + qkv 1,769,472
    #                 + proj 589,824+768 + norm2 1,536
    #                 + fc1 2,359,296+3,072 + fc2 2,359,296+768             =  7,087,104
    #   12 blocks                                                           = 85,045,248
    #   fc_norm 1,536 + head 768*400+400 = 307,600                          =    309,136
    #   total                                                               = 86,534,800
    assert sum(p.numel() for p in model.parameters()) == 86_534_800


def test_sinusoid_table_by_hand():
    D = 8
    table = get_sinusoid_encoding_table(5, D)
    assert table.shape == (5, D)
    assert table[1, 0] == pytest.approx(math.sin(1)) and table[1, 1] == pytest.approx(math.cos(1))
    assert table[1, 2] == pytest.approx(math.sin(1 / 10000 ** (2 / D)))
    assert table[1, 3] == pytest.approx(math.cos(1 / 10000 ** (2 / D)))
    assert table[3, 7] == pytest.approx(math.cos(3 / 10000 ** (6 / D)))
    assert torch.equal(table[0, 0::2], torch.zeros(4)) and torch.equal(table[0, 1::2], torch.ones(4))


def test_position_table_fixed_or_learned():
    model = tiny()
    table = get_sinusoid_encoding_table(8, 192)[None]
    assert "pos_embed" not in model.state_dict() and "pos_embed" in dict(model.named_buffers())
    assert torch.equal(model.pos_embed, table)
    learned = tiny(learned_pos=True)
    assert isinstance(learned.pos_embed, torch.nn.Parameter) and learned.pos_embed.shape == (1, 8, 192)
    assert torch.equal(learned.pos_embed.data, table) and "pos_embed" in learned.state_dict()


def test_attention_matches_hand_computation():
    torch.manual_seed(0)
    B, N, D, H = 2, 5, 8, 2
    attn = Attention(D, H)
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(B, N, D)
    W, bias = attn.qkv.weight, torch.cat([attn.q_bias, torch.zeros(D), attn.v_bias])  # no key bias
    q, k, v = (x @ W.T + bias).split(D, dim=-1)
    heads = []
    for h in range(H):
        s = slice(h * D // H, (h + 1) * D // H)
        a = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(D // H), dim=-1)
        heads.append(a @ v[..., s])
    ref = F.linear(torch.cat(heads, dim=-1), attn.proj.weight, attn.proj.bias)
    torch.testing.assert_close(attn(x), ref)  # the fused kernel (scaled_dot_product_attention)
    assert attn.map is None  # nothing kept
    attn.keep_map = True  # the explicit path, for a method that taps attention maps
    torch.testing.assert_close(attn(x), ref)
    expected = torch.stack([torch.softmax(q[..., h * 4:(h + 1) * 4] @ k[..., h * 4:(h + 1) * 4].transpose(1, 2) / 2,
                                          dim=-1) for h in range(H)], 1)
    torch.testing.assert_close(attn.map, expected)  # [B, heads, N, N], rows summing to 1


def test_fused_attention_gives_the_explicit_logits_and_gradients():
    """ViT-S (6 heads of 64) on 8x64x64 clips (64 tokens): the fused path's logits within 1e-5 of the explicit
    matrix's, the same gradients, the same state dict."""
    torch.manual_seed(0)
    model = VideoViT(5, 8, 64, embed_dim=384, depth=2, num_heads=6, drop_path=0.0, init_scale=1.0)
    x = torch.randn(2, 3, 8, 64, 64)
    fused = model(x)
    fused.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for block in model.blocks:
        block.attn.keep_map = True
    explicit = model(x)
    explicit.sum().backward()
    assert float((fused - explicit).abs().max()) < 1e-5 and float(fused.abs().max()) > 0.1
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5)
    assert all(block.attn.map.shape == (2, 6, 64, 64) for block in model.blocks)
    assert "blocks.0.attn.map" not in model.state_dict() and len(model.state_dict()) == len(VideoViT(
        5, 8, 64, embed_dim=384, depth=2, num_heads=6).state_dict())


def test_drop_path_schedule_and_init():
    model = videomae_vit_ti(5, num_frames=4, crop_size=32, depth=3, drop_path=0.2, head_drop=0.5)
    assert [b.drop_path.drop_prob for b in model.blocks[1:]] == pytest.approx([0.1, 0.2])
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity) and model.head_drop.p == 0.5
    # trunc_normal(std .02) * init_scale
    assert float(model.head.weight.detach().std()) == pytest.approx(0.02 * 0.001, rel=0.2)
    assert not model.head.bias.any()


def test_conv_stem_same_tokens_and_patch_stem_keeps_official_keys():
    patch, conv = tiny(), tiny(stem="conv")
    assert not any(k.startswith("patch_embed.stem") for k in patch.state_dict())  # official key set unchanged
    # D/8 and D/4 channels (D = 192), each conv halving H and W; then a 2 x 16/4 x 16/4 cube conv
    widths = [m.out_channels for m in conv.patch_embed.stem if isinstance(m, torch.nn.Conv3d)]
    assert widths == [24, 48] and conv.patch_embed.proj.kernel_size == (2, 4, 4)
    x = torch.randn(2, 3, 4, 32, 32)
    tokens = conv.patch_embed(x)
    assert tokens.shape == patch.patch_embed(x).shape == (2, 8, 192)
    assert conv.eval()(x).shape == (2, 5)
    with pytest.raises(ValueError, match="divisible by 4"):
        videomae_vit_ti(5, num_frames=4, crop_size=36, patch_size=6, stem="conv")
    with pytest.raises(ValueError, match="'patch' or 'conv'"):
        tiny(stem="hybrid")


def test_config_sets_stem_depth_and_head_scale():
    from vidkd.config import load_config
    from vidkd.models.base import build_from_config

    cfg = load_config(None, ["DATA.NUM_FRAMES", "4", "DATA.TRAIN_CROP_SIZE", "32", "MODEL.VIT_PATCH_SIZE", "8",
                             "MODEL.VIT_STEM", "conv", "MODEL.VIT_DEPTH", "2", "MODEL.VIT_HEAD_INIT_SCALE", "1.0"])
    model = build_from_config(cfg, "videomae_vit_ti", 5)
    assert len(model.blocks) == 2 and model.token_grid == (2, 4, 4) and len(model.patch_embed.stem) == 6
    assert float(model.head.weight.detach().std()) == pytest.approx(0.02, rel=0.2)  # init_scale 1
    assert build_from_config(cfg, "c3d_tiny", 5).head.out_features == 5  # the ViT keys leave CNNs alone
