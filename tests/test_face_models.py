"""Face models: 112 x 112 faces -> 512-d embeddings, with the published sizes and FLOPs of IResNet-18/50/100 and
MobileFaceNet, and four stages at strides 2 to 16."""
import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from vidkd.models import REGISTRIES
from vidkd.models.face import MobileFaceNet
from vidkd.models.taps import probe

# (parameters in millions, GFLOPs at 112 x 112) as published with ArcFace's backbones (insightface) and MobileFaceNet
PUBLISHED = {"iresnet18": (24.0, 2.62), "iresnet50": (43.6, 6.33), "iresnet100": (65.2, 12.12)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_iresnets_have_their_published_size_and_flops(name):
    model = REGISTRIES["face"][name](crop_size=112).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    flops = FlopCountAnalysis(model, torch.zeros(1, 3, 112, 112))
    flops.unsupported_ops_warnings(False)
    assert params == pytest.approx(PUBLISHED[name][0], abs=0.05)
    assert flops.total() / 1e9 == pytest.approx(PUBLISHED[name][1], abs=0.01)


def test_mobilefacenet_has_its_published_size_at_its_papers_128_d():
    """0.99 M parameters and 221 M multiply-adds with the paper's 128-d embedding (vidkd's 512-d default adds the
    wider last layer)."""
    model = MobileFaceNet(dim=128).eval()
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(0.99, abs=0.02)
    flops = FlopCountAnalysis(model, torch.zeros(1, 3, 112, 112))
    flops.unsupported_ops_warnings(False)
    assert flops.total() / 1e6 == pytest.approx(221, rel=0.05)


STRIDES = {"swin": [4, 8, 16, 28], "vit": [8] * 4}  # the transformers' (Swin-T's last stage: 112 / 4 = 4 x 4)


@pytest.mark.parametrize("name", sorted(REGISTRIES["face"]))
def test_face_models_give_an_embedding_and_four_stages(name):
    model = REGISTRIES["face"][name](crop_size=112)
    dim = 64 if name.endswith("_tiny") else 512
    x = torch.randn(2, 3, 112, 112)
    assert model.eval()(x).shape == (2, dim)
    found = probe(model, (112, 112))
    strides = STRIDES.get(name.split("_")[0], [2, 4, 8, 16])
    assert [s["stride"] for s in found["stages"]] == [(s, s) for s in strides]
    assert found["embed_dim"] == dim  # the taps' embedding is the output itself
    if name.startswith("iresnet"):
        assert not model.embedding[1].weight.requires_grad  # IResNet: the embedding BN's scale fixed at 1
