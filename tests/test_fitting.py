"""Settings fitted to the data (rcnn_cli.fitting), the time-budget planner, and the record of chosen values."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from rcnn_cli import fitting as F
from rcnn_cli.engine import TrainConfig, budget, train
from rcnn_cli.engine.trainer import lr_at
from rcnn_cli.errors import UserError
from rcnn_cli.models.faster_rcnn import FasterRCNNConfig


def _dataset(images: list[tuple[int, int, list[tuple[str, float]]]]):
    """Records of ``(width, height, [(label, box side)])``: square boxes at the image's corner."""
    records = [SimpleNamespace(width=w, height=h, path=None, boxes=[[0, 0, s, s] for _, s in objs],
                               labels=[c for c, _ in objs]) for w, h, objs in images]
    classes = sorted({c for _, _, objs in images for c, _ in objs})
    return SimpleNamespace(records=records, classes=classes, root="data", split="train")


def test_stats_read_sizes_and_the_smallest_class():
    ds = _dataset([(640, 480, [("cell", 100.0), ("dot", 20.0)]), (640, 480, [("cell", 120.0), ("dot", 30.0)])])
    s = F.data_stats(ds)
    assert s.images == 2 and s.objects.tolist() == [2, 2] and s.aspect() == pytest.approx(640 / 480)
    c, small = s.smallest()
    assert c == "dot" and small == pytest.approx(21.0)  # 10th percentile of 20, 30


def test_small_objects_raise_the_scale_up_to_the_device_cap():
    ds = _dataset([(640, 480, [("dot", 16.0), ("cell", 100.0)])] * 5)  # 16-px dots need x2 to reach 32 px
    s = F.data_stats(ds)
    size, max_size, why = F.image_scale(s, "cuda")
    assert (size, max_size) == (800, 1056) and "x2.00" in why and "capped at 800" in why
    size, _, why = F.image_scale(s, "cpu")
    assert size == 640 and "--min-size 960 keeps 32" in why  # the cap costs the dots: said, with the flag


def test_objects_that_fit_keep_the_native_scale_and_large_objects_are_not_upscaled():
    native = F.data_stats(_dataset([(640, 480, [("a", 40.0)])] * 3))
    assert F.image_scale(native, "cpu")[:2] == (480, 640)  # 40-px objects at 480: nothing to change
    big_images = F.data_stats(_dataset([(1333, 1000, [("a", 300.0)])] * 3))
    size, _, why = F.image_scale(big_images, "cpu")
    assert size == 640 < 1000 and "capped at 640" in why  # shrunk: the objects stay at 144 px
    small_images = F.data_stats(_dataset([(400, 300, [("a", 200.0)])] * 3))
    size, _, why = F.image_scale(small_images, "cpu")
    assert size == 480 and "30 cells" in why  # only up to the map's minimum, not for the objects


def test_training_sizes_and_the_fitted_set_follow_a_given_size():
    assert F.training_sizes(480) == [416, 448, 480, 512, 544]
    s = F.data_stats(_dataset([(640, 480, [("a", 40.0), ("b", 120.0)])] * 4))
    cfg, f = F.fit_faster(s, FasterRCNNConfig(), (), "cpu", batch_size=2)
    assert f.values["min_size"] == 480 and f.values["train_min_sizes"] == [416, 448, 480, 512, 544]
    assert (cfg.min_size, cfg.max_size, cfg.train_min_sizes) == (480, 736, [416, 448, 480, 512, 544])
    assert cfg.anchor_sizes == f.values["anchor_sizes"] and cfg.auto_anchors
    assert f.values["max_size"] == 736  # 544 x 4/3 = 725 -> a multiple of 32
    assert f.values["rpn_pre_nms_top_n_train"] == 2000 and F.fit_faster(s, FasterRCNNConfig(), (), "cuda")[1].values[
        "rpn_pre_nms_top_n_train"] == 12000
    assert f.values["anchor_sizes"] == F.anchor_sizes_from(s, 3, 480, 736) and f.values["epochs"] == 50
    cfg, g = F.fit_faster(s, FasterRCNNConfig(min_size=320), {"min_size"}, "cpu", schedule=False)
    assert "min_size" not in g.values and "epochs" not in g.values
    assert g.values["train_min_sizes"] == [288, 320, 352] and g.values["max_size"] == 480  # around the given 320
    assert (cfg.min_size, cfg.max_size, cfg.train_min_sizes) == (320, 480, [288, 320, 352])
    assert set(g.record()) == set(g.values) and all(g.reasons[k] for k in g.values)


def test_anchor_sizes_are_fitted_unless_given_or_a_pyramid_without_auto_anchors():
    fpn = FasterRCNNConfig(backbone="mobilenet_v3_large", fpn=True, anchor_sizes=[32, 64, 128, 256, 512])
    assert F.fits_anchors(FasterRCNNConfig(), ()) and not F.fits_anchors(fpn, ())
    assert not F.fits_anchors(FasterRCNNConfig(), {"anchor_sizes"})
    assert not F.fits_anchors(FasterRCNNConfig(auto_anchors=False), {"auto_anchors"})
    s = F.data_stats(_dataset([(640, 480, [("a", 40.0), ("b", 120.0)])] * 4))
    cfg, f = F.fit_faster(s, replace(fpn, auto_anchors=True), {"auto_anchors", "fpn"})
    assert cfg.anchor_sizes == F.anchor_sizes_from(s, 5, cfg.min_size, cfg.max_size) and len(cfg.anchor_sizes) == 5
    kept, f = F.fit_faster(s, fpn, {"fpn"})
    assert kept.anchor_sizes == [32, 64, 128, 256, 512] and "anchor_sizes" not in f.values and not kept.auto_anchors


def test_crowded_images_get_more_proposals_and_detections_sparse_ones_the_papers():
    sparse = F.fit_faster(F.data_stats(_dataset([(640, 480, [("a", 40.0)] * 3)] * 4)), FasterRCNNConfig())[1]
    assert (sparse.values["rpn_post_nms_top_n_test"], sparse.values["box_detections_per_img"]) == (300, 100)
    shelves = _dataset([(640, 480, [("item", 30.0)] * 20)] * 3 + [(640, 480, [("item", 30.0)] * 147)])
    f = F.fit_faster(F.data_stats(shelves), FasterRCNNConfig())[1]
    assert f.values["rpn_post_nms_top_n_test"] == 800  # 5 x 147 = 735 -> the next multiple of 100
    assert f.values["box_detections_per_img"] == 300  # 2 x 147 = 294 -> the next multiple of 50
    assert "147 objects" in f.reasons["rpn_post_nms_top_n_test"] and "(147)" in f.reasons["box_detections_per_img"]
    cfg, given = F.fit_faster(F.data_stats(shelves), FasterRCNNConfig(rpn_post_nms_top_n_test=1000),
                              {"rpn_post_nms_top_n_test"})
    assert "rpn_post_nms_top_n_test" not in given.values and given.values["box_detections_per_img"] == 300
    assert (cfg.rpn_post_nms_top_n_test, cfg.box_detections_per_img) == (1000, 300)
    assert F.fit_rcnn(F.data_stats(shelves), {}, "rpn", "why").values["top_k"] == 300  # R-CNN's detections too


def test_default_epochs_from_the_dataset_size():
    assert F.default_epochs(292, 2) == 12  # 146 iterations per epoch: 12 epochs are 1752
    assert F.default_epochs(160, 2) == 13  # 80 per epoch: 13 epochs reach 1000 iterations
    assert F.default_epochs(10, 2) == 50  # at most 50


def test_a_split_without_one_valid_box_is_one_line():
    ds = _dataset([(100, 100, [("a", 0.0)]), (100, 100, [("a", 0.0)])])
    with pytest.raises(UserError, match="none of the 2 boxes of split 'train' is valid"):
        F.data_stats(ds)


def test_budget_planner_with_a_fake_speed():
    assert budget.plan_epochs(1800, 0.5, 150) == 24  # 75 s per epoch
    assert budget.plan_epochs(1800, 0.5, 150, spent_s=100) == 22
    assert budget.plan_epochs(36000, 0.1, 10) == budget.MAX_EPOCHS
    assert budget.replan_epochs(1, 130, 130, 1800, most=12) == 12
    with pytest.raises(UserError, match=r"too small: one epoch takes about 1m15s .* give at least 2m"):
        budget.plan_epochs(60, 0.5, 150)
    assert budget.epoch_fits(100, 50, 50) and not budget.epoch_fits(100, 60, 50)
    assert budget.replan_epochs(1, 130, 130, 1800) == 13  # the probe said 15; the first epoch took 130 s
    assert budget.replan_epochs(3, 1790, 120, 1800) == 3 and budget.replan_epochs(1, 10, 1, 1e6) == budget.MAX_EPOCHS
    assert budget.probe_iterations(5) == 5 and budget.probe_iterations(500) == budget.PROBE


class _Slow(nn.Module):
    """10 ms per iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets):
        time.sleep(0.01)
        return {"loss": (self.w - 1) ** 2}


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 30

    def __getitem__(self, i):
        return torch.zeros(3, 2, 2), {"image_id": str(i)}


def test_engine_fits_the_epochs_to_the_budget_and_records_the_plan(tmp_path):
    cfg = TrainConfig(epochs=40, batch_size=3, warmup_iters=0, progress=False, device="cpu", time_budget="1s",
                      max_iters=25)
    summary = train(_Slow(), _Data(), tmp_path / "run", cfg, kind="faster")
    plan = summary["time_budget"]
    assert 5 <= plan["planned_epochs"] <= 10  # 1 s / (10 iterations x ~10 ms)
    assert plan["schedule_epochs"] == 40 and plan["epochs_that_fit"] >= plan["planned_epochs"]  # re-planned after epoch 1
    short = train(_Slow(), _Data(), tmp_path / "short", replace(cfg, epochs=2), kind="faster")["time_budget"]
    assert (short["planned_epochs"], short["schedule_epochs"]) == (2, 2) and short["epochs_that_fit"] >= 5
    assert plan["iters_per_epoch"] == 10 and plan["probe_iterations"] == 8 and summary["iterations"] == 25
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["train"]["epochs"] == plan["planned_epochs"] and record["train"]["time_budget"] == 1.0
    assert record["train"]["lr_steps"] == list(budget_steps(plan["planned_epochs"]))
    assert record["train"]["time_budget_plan"]["seconds_per_iter"] == plan["seconds_per_iter"]
    with pytest.raises(UserError, match="give at least"):
        train(_Slow(), _Data(), tmp_path / "small", TrainConfig(epochs=2, batch_size=3, progress=False,
                                                                device="cpu", time_budget=0.05), kind="faster")


def test_auto_schedule_follows_the_budget(tmp_path):
    """--lr-schedule auto: the cosine with the weights' average where the budget cuts the schedule, the step
    schedule without one where it runs whole or without a budget; a resumed run keeps what was chosen."""
    cfg = TrainConfig(epochs=40, batch_size=3, warmup_iters=0, progress=False, device="cpu", time_budget="1s",
                      max_iters=15, lr_schedule="auto", ema=0.9)

    def chosen(run):
        record = json.loads((run / "config.json").read_text())["train"]
        return record["lr_schedule"], record["ema"], (run / "checkpoint" / "ema.safetensors").is_file()

    train(_Slow(), _Data(), tmp_path / "cut", cfg, kind="faster")  # 10 ms x 10 per epoch: 1 s fits < 40 epochs
    assert chosen(tmp_path / "cut") == ("cosine", 0.9, True)
    plan = json.loads((tmp_path / "cut" / "config.json").read_text())["train"]["time_budget_plan"]
    assert (plan["lr_schedule"], plan["ema"]) == ("cosine", 0.9)
    summary = train(_Slow(), _Data(), tmp_path / "cut", replace(cfg, max_iters=25), resume=True, kind="faster")
    assert summary["iterations"] == 25 and chosen(tmp_path / "cut") == ("cosine", 0.9, True)
    train(_Slow(), _Data(), tmp_path / "whole", replace(cfg, epochs=2, max_iters=None), kind="faster")
    assert chosen(tmp_path / "whole") == ("step", 0.0, False)
    train(_Slow(), _Data(), tmp_path / "free", replace(cfg, epochs=1, max_iters=None, time_budget=None), kind="faster")
    assert chosen(tmp_path / "free") == ("step", 0.0, False)
    assert lr_at(replace(cfg, lr_schedule="auto", lr=0.1), 5, 3, 100) == lr_at(replace(cfg, lr_schedule="step", lr=0.1),
                                                                              5, 3, 100)  # until it is chosen


class _Paced(_Slow):
    """Slow on its first two calls (warm-up), then 10 ms; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images, targets):
        self.calls += 1
        time.sleep(0.2 if self.calls <= 2 else 0.01)
        return {"loss": (self.w - 1) ** 2}


def test_time_iterations_leaves_out_the_warm_up_and_cycles_small_data(monkeypatch):
    from rcnn_cli import memory
    from rcnn_cli.engine import time_iterations

    policy = []
    monkeypatch.setattr(memory, "reuse_memory", lambda: policy.append("reuse"))
    model = _Paced()
    model.conv = torch.nn.Conv2d(3, 8, 3)
    cfg = TrainConfig(batch_size=3, progress=False, device="cpu")
    per_iter = time_iterations(model, torch.utils.data.Subset(_Data(), range(6)), cfg, iterations=5)
    assert model.calls == 7  # 2 warm-up + 5 timed over 2 batches per pass
    assert 0.01 <= per_iter < 0.1  # the 0.2-s warm-up iterations are not in it
    assert model.w.item() == 0.0  # learning rate 0: a probe, not training
    assert policy == ["reuse"]  # timed under the trainer's memory policy
    w = model.conv.weight  # and in its memory layout
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    plain = _Paced()
    plain.conv = torch.nn.Conv2d(3, 8, 3)
    time_iterations(plain, torch.utils.data.Subset(_Data(), range(6)), replace(cfg, channels_last=False), iterations=1)
    assert plain.conv.weight.is_contiguous()
    with pytest.raises(UserError, match="no training images"):
        time_iterations(model, torch.utils.data.Subset(_Data(), []), cfg)


def test_fit_backbone_takes_the_largest_whose_schedule_fits_the_budget(monkeypatch):
    """100 images, batch 2: 50 iterations per epoch, 12 epochs = 600 iterations. Lite2 at 1.0 s per
    iteration needs 600 s, Lite1 at 0.8 s 480 s: a 700-s budget buys Lite2, 550 s Lite1, 310 s neither."""
    from rcnn_cli.models.faster_rcnn import train as T

    assert T.LARGER_BACKBONES == ("efficientnet_lite2",)  # the one measured against Lite0 at equal time
    monkeypatch.setattr(T, "LARGER_BACKBONES", ("efficientnet_lite1", "efficientnet_lite2"))  # smallest first
    speed, probed = {"efficientnet_lite2": 1.0, "efficientnet_lite1": 0.8}, []
    monkeypatch.setattr(T, "build_model", lambda cfg, weights: SimpleNamespace(backbone=cfg.backbone))
    monkeypatch.setattr(T, "training_dataset", lambda ds, cfg, seed: None)
    monkeypatch.setattr("rcnn_cli.engine.time_iterations",
                        lambda model, data, config: probed.append(model.backbone) or speed[model.backbone])
    from rcnn_cli.backbones import weights_id

    ds = SimpleNamespace(records=[None] * 100)
    cfg = FasterRCNNConfig(classes=["a"], weights_id=weights_id("efficientnet_lite0"))  # as _new_config gives it

    def fit(budget_s, budget_for=None):
        fitted, probed[:] = F.Fitted(), []
        tc = TrainConfig(epochs=12, batch_size=2, time_budget=budget_s, progress=False)
        chosen, tc2 = T.fit_backbone(ds, cfg, tc, fitted, budget_for)
        assert chosen.backbone == fitted.values["backbone"] and chosen.weights_id.startswith(chosen.backbone)
        own = budget_for(chosen.backbone) if budget_for and chosen.backbone in speed else budget_s
        assert own - 5 < tc2.time_budget <= own  # the chosen one's budget, less the seconds spent measuring
        return chosen.backbone, fitted.reasons["backbone"]

    backbone, why = fit(700)
    assert backbone == "efficientnet_lite2" and probed == ["efficientnet_lite1", "efficientnet_lite2"]
    assert "(12 epochs x 50 iterations)" in why and "efficientnet_lite2: 12 of 12 epochs at 1.00 s" in why
    backbone, why = fit(550)
    # (550 s less the probe's few milliseconds) // 50 s per epoch = 10
    assert backbone == "efficientnet_lite1" and "efficientnet_lite2: 10 of 12 epochs at 1.00 s" in why
    backbone, why = fit(310)
    assert backbone == "efficientnet_lite0" and "efficientnet_lite1: 7 of 12 epochs at 0.80 s" in why
    assert probed == ["efficientnet_lite1"]  # Lite2 is never faster: not measured
    assert fit(30)[0] == "efficientnet_lite0"  # not one epoch of either
    # a pipeline's stage: Lite2's slower later stages leave it 550 s, Lite1's 700 s
    stage = {"efficientnet_lite1": 700.0, "efficientnet_lite2": 550.0}
    assert fit(400, stage.get)[0] == "efficientnet_lite1"


def test_the_backbone_is_fitted_only_when_nothing_fixes_it():
    from rcnn_cli.models.faster_rcnn.train import backbone_is_fitted

    cfg, tc = FasterRCNNConfig(classes=["a"]), TrainConfig(time_budget="30m")
    assert backbone_is_fitted(cfg, set(), tc, None)
    assert not backbone_is_fitted(cfg, set(), replace(tc, time_budget=None), None)  # no budget: the default
    assert not backbone_is_fitted(cfg, {"backbone"}, tc, None)
    assert not backbone_is_fitted(replace(cfg, weights="lite0.safetensors"), set(), tc, None)
    assert not backbone_is_fitted(cfg, set(), tc, "coco")


def budget_steps(epochs: int):
    from rcnn_cli.engine import default_lr_steps

    return default_lr_steps(epochs)


def test_faster_records_chosen_and_given_values(tmp_path, shapes_root):
    from rcnn_cli.models.faster_rcnn import FasterRCNNConfig, train_faster

    cfg = TrainConfig(epochs=1, max_iters=1, warmup_iters=1, progress=False, device="cpu")
    train_faster(shapes_root, "trainval", tmp_path / "run", FasterRCNNConfig(weights="none", min_size=128), cfg,
                 given={"weights", "min_size"}, sources={"min_size": "command line"})
    rec = json.loads((tmp_path / "run" / "config.json").read_text())
    fitted = rec["model"]["trained_on"]["fitted"]
    assert rec["model"]["min_size"] == 128 and "min_size" not in fitted and "epochs" not in fitted
    assert rec["model"]["train_min_sizes"] == fitted["train_min_sizes"]["value"] == [96, 128, 160]
    assert rec["model"]["anchor_sizes"] == fitted["anchor_sizes"]["value"] and rec["model"]["auto_anchors"]
    assert rec["model"]["rpn_pre_nms_top_n_train"] == 2000
    assert rec["model"]["rpn_post_nms_top_n_test"] == fitted["rpn_post_nms_top_n_test"]["value"] == 300
    assert rec["model"]["box_detections_per_img"] == fitted["box_detections_per_img"]["value"] == 100
    assert rec["model"]["color_jitter"] == 0.0 and "color_jitter" not in fitted  # an option, not chosen
    assert rec["sources"]["min_size"] == "command line" and rec["sources"]["max_size"].startswith("chosen: ")
    paper = tmp_path / "paper"
    train_faster(shapes_root, "trainval", paper, FasterRCNNConfig(weights="none"), cfg, fit=False)
    m = json.loads((paper / "config.json").read_text())["model"]
    assert (m["min_size"], m["max_size"], m["anchor_sizes"], m["train_min_sizes"]) == (600, 1000, [128, 256, 512], None)
    assert m["trained_on"]["fitted"] == {}


# ------------------------------------------------------------------------------ COCO-pretrained starting points


@pytest.fixture(scope="module")
def coco_like(tmp_path_factory):
    """An untrained torchvision fasterrcnn_resnet50_fpn (91 COCO classes) saved as .safetensors and .pth."""
    from safetensors.torch import save_file
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    d = tmp_path_factory.mktemp("coco")
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "coco.safetensors"))
    torch.save(state, d / "coco.pth")
    return d, state


def test_init_loads_every_tensor_but_the_predictor_and_trains(tmp_path, shapes_root, coco_like):
    from rcnn_cli.io.tensors import load_tensors
    from rcnn_cli.models.faster_rcnn import FPN_ANCHOR_SIZES, PREDICTOR, FasterRCNNConfig, train_faster

    d, state = coco_like
    cfg = TrainConfig(epochs=1, max_iters=1, lr=1e-9, warmup_iters=1, progress=False, device="cpu")
    model = FasterRCNNConfig(backbone="resnet50", fpn=True, weights="none", min_size=128, max_size=128,
                             anchor_sizes=list(FPN_ANCHOR_SIZES))
    summary = train_faster(shapes_root, "trainval", tmp_path / "run", model, cfg,
                           given={"backbone", "fpn", "weights", "min_size", "max_size"},
                           init=str(d / "coco.safetensors"))
    assert summary["iterations"] == 1 and all(np.isfinite(v) for v in summary["losses"].values())
    trained = load_tensors(tmp_path / "run" / "model.safetensors")
    for k, v in trained.items():
        if k.startswith(PREDICTOR):
            assert v.shape[0] in (5, 20)  # 4 classes + background (x4 box deltas), not COCO's 91
        elif not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(v, state[k], atol=1e-6, rtol=0)  # lr 1e-9: what was loaded
    init = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["trained_on"]["init"]
    assert init["tensors_loaded"] == init["tensors"] and init["not_loaded"] == []


def test_init_from_torchvisions_mobilenet_fpn_detector(tmp_path, shapes_root):
    """A saved (untrained) torchvision fasterrcnn_mobilenet_v3_large_fpn: the same architecture is
    rebuilt (3 levels x 5 anchor sizes), every tensor but the predictor loads, and it trains."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    from rcnn_cli.io.tensors import load_tensors
    from rcnn_cli.models.faster_rcnn import FPN_ANCHOR_SIZES, PREDICTOR, FasterRCNNConfig, train_faster

    torch.manual_seed(0)
    state = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    path = tmp_path / "coco_mobilenet.pth"
    torch.save(state, path)
    cfg = TrainConfig(epochs=1, max_iters=1, lr=1e-9, warmup_iters=1, progress=False, device="cpu")
    model = FasterRCNNConfig(backbone="mobilenet_v3_large", fpn=True, weights="none", min_size=128, max_size=128,
                             anchor_sizes=list(FPN_ANCHOR_SIZES))
    train_faster(shapes_root, "trainval", tmp_path / "run", model, cfg,
                 given={"backbone", "fpn", "weights", "min_size", "max_size"}, init=str(path))
    trained = load_tensors(tmp_path / "run" / "model.safetensors")
    assert set(trained) == {k for k in state if not k.endswith("num_batches_tracked")} | \
        {k for k in trained if k.endswith("num_batches_tracked")}
    for k, v in trained.items():
        if k.startswith(PREDICTOR):
            assert v.shape[0] in (5, 20)
        elif not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(v, state[k], atol=1e-6, rtol=0)
    rec = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert rec["trained_on"]["init"]["not_loaded"] == [] and rec["anchor_sizes"] == [32, 64, 128, 256, 512]
    with pytest.raises(UserError, match="mobilenet_v3_large has no single-level trunk"):
        train_faster(shapes_root, "trainval", tmp_path / "no_fpn",
                     FasterRCNNConfig(backbone="mobilenet_v3_large", weights="none", min_size=128, max_size=128), cfg,
                     given={"backbone", "weights", "min_size", "max_size"})


def test_init_errors_are_one_line(tmp_path, shapes_root, coco_like, monkeypatch):
    from torchvision.models._api import WeightsEnum

    from rcnn_cli.models.faster_rcnn import FasterRCNNConfig, init_state, train_faster

    d, _ = coco_like
    assert set(init_state(str(d / "coco.pth"))) == set(init_state(str(d / "coco.safetensors")))
    cfg = TrainConfig(epochs=1, max_iters=1, progress=False, device="cpu")
    with pytest.raises(UserError, match="tensors fit this model"):  # COCO's resnet50 into EfficientNet-Lite0
        train_faster(shapes_root, "trainval", tmp_path / "a",
                     FasterRCNNConfig(weights="none", min_size=128, max_size=128), cfg,
                     given={"weights", "min_size", "max_size"}, init=str(d / "coco.safetensors"))
    bad = tmp_path / "code.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "fn": SimpleNamespace(x=1)}, bad)
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):  # pickled objects are refused
        init_state(str(bad))
    with pytest.raises(UserError, match="no such file"):
        init_state(str(tmp_path / "missing.pth"))

    def offline(self, *a, **k):
        raise OSError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match="--init coco: torchvision's COCO weights could not be loaded .* --init FILE"):
        init_state("coco")


def test_fast_rcnn_fits_only_the_named_settings():
    from rcnn_cli.models.fast_rcnn import FastRCNNConfig
    from rcnn_cli.models.fast_rcnn.train import _fitted

    ds = _dataset([(640, 480, [("a", 40.0), ("b", 120.0)])] * 4)
    model, train_cfg, sources = _fitted(ds, FastRCNNConfig(classes=["a", "b"], max_size=900),
                                        TrainConfig(epochs=3, device="cpu"), {"max_size": "command line"},
                                        ["min_size", "epochs"])
    assert (model.min_size, model.max_size) == (480, 900)  # chosen; given
    assert train_cfg.epochs == 50 and train_cfg.lr_steps == (33, 46)  # 4 images: 1000 iterations need 50 epochs
    assert set(model.trained_on["fitted"]) == {"min_size", "epochs"} and sources["max_size"] == "command line"
    assert sources["min_size"].startswith("chosen: images' median shorter side 480 px")
    assert F.fit_fast(F.data_stats(ds), {"min_size": 320}).values["max_size"] == 416  # 320 x 4/3 -> 32-multiple


# ------------------------------------------------------------------------------ the R-CNN pipeline's settings


def test_rcnn_settings_from_crowded_small_objects_and_from_few_large_ones():
    cells = F.data_stats(_dataset([(640, 480, [("dot", 30.0)] * 8 + [("cell", 100.0)] * 20)] * 50))
    f = F.fit_rcnn(cells, {}, "rpn", "given by the test", "cpu", ("pool", "grid"))
    v = f.values
    assert v["method"] == "rpn" and f.reasons["method"] == "given by the test"
    assert v["limit"] == 150  # 5 x 28 objects = 140 -> the next multiple of 50
    assert v["min_size"] == 15  # half the dots' 30 px
    assert "max_size" not in v  # selective search's image size only matters to selective search
    assert (v["warp_size"], v["padding"]) == (96, 10)  # median box 100 px
    assert v["layer"] == "grid"
    animals = F.data_stats(_dataset([(500, 375, [("raccoon", 250.0)])] * 40))
    f = F.fit_rcnn(animals, {}, "selective-search", "why", "cpu", ("pool", "grid"))
    v = f.values
    assert v["limit"] == 100 and v["min_size"] == 16 and v["max_size"] == 512  # 500 -> 512 (multiple of 32)
    assert (v["warp_size"], v["padding"]) == (128, 13)  # 250-px boxes, capped at 128 on a CPU
    assert F.fit_rcnn(animals, {}, "rpn", "why", "cuda").values["warp_size"] == 224  # the GPU's range
    assert "layer" not in F.fit_rcnn(animals, {}, "rpn", "why", "cpu", ("pool5", "fc6", "fc7")).values


def test_rcnn_settings_given_win_and_the_rest_follow_them():
    s = F.data_stats(_dataset([(640, 480, [("a", 100.0)])] * 10))
    f = F.fit_rcnn(s, {"warp_size": 224, "limit": 0, "method": "selective-search", "layer": None}, "rpn", "why")
    assert {"warp_size", "limit", "method"}.isdisjoint(f.values)  # given: never chosen
    assert f.values["padding"] == 22 and "224-px warp" in f.reasons["padding"]  # follows the given warp
    assert f.values["max_size"] == 512  # the given method is selective search: 640 capped at 512
