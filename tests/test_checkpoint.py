"""Checkpoint loading from the layouts people have, on real files written in a temp dir."""
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from vidkd.errors import CheckpointError
from vidkd.models import build_model
from vidkd.models.checkpoint import load_checkpoint, read_state_dict, save_model


def tiny_vit(frames=4, classes=5, **kw):
    return build_model("videomae_vit_ti", classes, frames, 32, depth=2, **kw).eval()


def logits(model, frames=4, crop=32):
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(2, 3, frames, crop, crop))


def test_saved_and_reloaded_checkpoint_gives_identical_logits(tmp_path):
    model = build_model("x3d_xs", 4, 4, 64).eval()
    save_model(model, str(tmp_path / "student.pt"), num_classes=4)
    again = build_model("x3d_xs", 4, 4, 64).eval()
    report = load_checkpoint(again, str(tmp_path / "student.pt"))
    assert report["missing"] == report["unexpected"] == [] and report["notes"] == []
    assert torch.equal(logits(model, 4, 64), logits(again, 4, 64))


def test_videomae_layout_loads_strictly(tmp_path):
    """Official key names (no `net.`), wrapped in `module` with an `encoder.` prefix, as people have them."""
    source = tiny_vit()
    official = {f"encoder.{k}": v for k, v in source.state_dict().items()}
    assert "encoder.blocks.0.attn.q_bias" in official and "encoder.patch_embed.proj.weight" in official
    torch.save({"module": official, "epoch": 3}, tmp_path / "videomae.pth")
    target = tiny_vit()
    report = load_checkpoint(target, str(tmp_path / "videomae.pth"))
    assert report["missing"] == report["unexpected"] == []
    assert torch.equal(logits(source), logits(target))


def test_position_table_interpolated_to_another_frame_count(tmp_path):
    source = tiny_vit(frames=4, learned_pos=True)  # tubelet 2: 2 x 2 x 2 tokens
    table = torch.zeros(1, 2, 2, 2, source.pos_embed.shape[-1])
    table[:, 1] = 1.0  # 0 in the first time slice, 1 in the second
    source.pos_embed.data = table.reshape(1, 8, -1)
    torch.save({"model": source.state_dict()}, tmp_path / "k400.pth")
    target = tiny_vit(frames=8, learned_pos=True)  # 4 x 2 x 2 tokens
    report = load_checkpoint(target, str(tmp_path / "k400.pth"))
    assert any("pos_embed resized" in n for n in report["notes"])
    # trilinear, align_corners=False, 2 -> 4 along time: source positions -0.25, 0.25, 0.75, 1.25 (clamped)
    got = target.pos_embed.reshape(4, 2, 2, -1)[:, 0, 0, 0]
    assert got.tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])


def test_position_table_dropped_for_a_fixed_sincos_model(tmp_path):
    source = tiny_vit(learned_pos=True)
    torch.save({"model": source.state_dict()}, tmp_path / "a.pth")
    report = load_checkpoint(tiny_vit(), str(tmp_path / "a.pth"))
    assert any("pos_embed dropped" in n for n in report["notes"])


def test_class_count_mismatch_drops_the_head(tmp_path):
    k400 = tiny_vit(classes=400)
    torch.save({"model": k400.state_dict()}, tmp_path / "k400.pth")
    hmdb = tiny_vit(classes=51)
    head_before = hmdb.head.weight.clone()
    report = load_checkpoint(hmdb, str(tmp_path / "k400.pth"), partial=True)
    assert report["notes"] == ["classifier dropped: 400 classes in the checkpoint, 51 here"]
    assert report["missing"] == ["head.bias", "head.weight"]
    assert torch.equal(hmdb.head.weight, head_before)
    assert torch.equal(hmdb.blocks[1].attn.qkv.weight, k400.blocks[1].attn.qkv.weight)
    with pytest.raises(CheckpointError, match="missing: \\['head.bias', 'head.weight'\\]"):
        load_checkpoint(tiny_vit(classes=51), str(tmp_path / "k400.pth"))


def test_wrong_shape_names_the_key(tmp_path):
    state = tiny_vit().state_dict()
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth: mis-shaped or mis-typed keys:\n  "
                                              r"blocks\.1\.mlp\.fc1\.weight: \(3, 3\) float in the checkpoint"):
        load_checkpoint(tiny_vit(), str(tmp_path / "bad.pth"))


def test_backbone_only_needs_partial(tmp_path):
    state = {k: v for k, v in tiny_vit().state_dict().items() if k.startswith("blocks.")}
    torch.save(state, tmp_path / "backbone.pth")
    with pytest.raises(CheckpointError, match="missing: \\['fc_norm.bias'"):
        load_checkpoint(tiny_vit(), str(tmp_path / "backbone.pth"))
    report = load_checkpoint(tiny_vit(), str(tmp_path / "backbone.pth"), partial=True)
    assert "patch_embed.proj.weight" in report["missing"] and report["unexpected"] == []


def test_pytorchvideo_hub_and_torchvision_layouts(tmp_path):
    x3d = build_model("x3d_xs", 6, 4, 64).eval()
    hub = {k.removeprefix("net."): v for k, v in x3d.state_dict().items()}
    assert "blocks.5.proj.weight" in hub
    torch.save({"model_state": hub, "epoch": 300}, tmp_path / "X3D_XS.pyth")
    again = build_model("x3d_xs", 6, 4, 64).eval()
    load_checkpoint(again, str(tmp_path / "X3D_XS.pyth"))
    assert torch.equal(logits(x3d, 4, 64), logits(again, 4, 64))

    r3d = build_model("r3d_18", 6, 4, 64).eval()
    torch.save(r3d.net.state_dict(), tmp_path / "r3d_18.pth")  # what torchvision publishes: a plain state dict
    again = build_model("r3d_18", 6, 4, 64).eval()
    load_checkpoint(again, str(tmp_path / "r3d_18.pth"))
    assert torch.equal(logits(r3d, 4, 64), logits(again, 4, 64))


def test_deepspeed_checkpoint_folder(tmp_path):
    """A real DeepSpeed engine (1 CPU rank, gloo) saves a vidkd model; the folder loads like a file."""
    script = textwrap.dedent(f"""
        import deepspeed, torch
        from vidkd.models import build_model
        deepspeed.init_distributed(dist_backend="gloo")
        torch.manual_seed(1)
        model = build_model("x3d_xs", 3, 4, 64)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config={{"train_batch_size": 1}})
        engine.save_checkpoint({str(tmp_path / 'ds')!r}, tag="global_step7")
        torch.save(model.state_dict(), {str(tmp_path / 'reference.pt')!r})
    """)
    env = dict(os.environ, DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "ds" / "latest").read_text().strip() == "global_step7"
    model = build_model("x3d_xs", 3, 4, 64)
    load_checkpoint(model, str(tmp_path / "ds"))
    reference = torch.load(tmp_path / "reference.pt", weights_only=True)
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


class WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_carrying_code_is_refused_and_not_run(tmp_path):
    victim = tmp_path / "pwned.txt"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": {"w": WritesAFile(str(victim))}}, f)
    with pytest.raises(CheckpointError, match="evil.pth: cannot be read as a weights-only checkpoint"):
        read_state_dict(str(tmp_path / "evil.pth"))
    assert not victim.exists()


def test_missing_and_empty_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(str(tmp_path / "none.pth"))
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_state_dict(str(tmp_path / "empty.pth"))
    (tmp_path / "ds").mkdir()
    with pytest.raises(CheckpointError, match="neither a 'latest' file"):
        read_state_dict(str(tmp_path / "ds"))


def test_keys_added_to_vidkd_since_a_checkpoint_differ_only_off_their_defaults():
    import yaml

    from vidkd.config import load_config
    from vidkd.config.defaults import get_defaults
    from vidkd.engine.checkpointing import config_differences

    now = get_defaults().dump()
    saved = yaml.safe_load(now)
    for key in ("FBT_DIM", "FBT_PAIRS"):  # as a checkpoint written before FBT holds its config
        del saved["DISTILL"][key]
    saved = yaml.safe_dump(saved)
    assert config_differences(saved, now) == {}
    assert config_differences(saved, load_config(None, ["DISTILL.FBT_DIM", "64"]).dump()) == {
        "DISTILL.FBT_DIM": (None, 64)}
    older = yaml.safe_load(saved)
    del older["MODEL"]["TEACHER_AUTOCAST"]  # a key whose default changed what earlier runs did: still a difference
    assert config_differences(yaml.safe_dump(older), now) == {"MODEL.TEACHER_AUTOCAST": (None, True)}


def test_the_meters_of_a_mid_epoch_checkpoint_from_before_generic_stats_are_upgraded():
    from vidkd.engine.trainer import upgrade_meters

    old = {"sums": {"loss/ce": 1.5}, "count": 2, "w_vit": torch.tensor([0.25, 0.75]), "failures": {}, "skipped": 0}
    new = upgrade_meters(old)
    assert sorted(new) == ["count", "failures", "skipped", "stats", "sums"] and new["sums"] == {"loss/ce": 1.5}
    assert list(new["stats"]) == ["w_vit"] and torch.equal(new["stats"]["w_vit"], torch.tensor([0.25, 0.75]))
    assert upgrade_meters({**old, "w_vit": torch.zeros(0)})["stats"] == {}  # a method without the weight
    assert upgrade_meters(new) is new
