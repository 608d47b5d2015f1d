"""The shared training engine (rcnn_cli.engine) and DetectionDataset: values, files, exact resume."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from rcnn_cli import engine
from rcnn_cli.data.dataset import Dataset, ImageRecord
from rcnn_cli.boxes import flip_boxes
from rcnn_cli.engine.dataset import DetectionDataset
from rcnn_cli.engine import TrainConfig, lr_at, train
from rcnn_cli.errors import UserError
from rcnn_cli.log import logger as rcnn_logger
from rcnn_cli.device import resolve_device, seed_everything


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n: int = 10) -> None:
        self.n = n
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 4, 4, generator=g), {"y": torch.tensor([float(i % 3)]), "image_id": str(i)}


class ToyModel(nn.Module):
    """Random inside forward (like RoI sampling), so exact resume needs the RNG state restored."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(48, 1)

    def forward(self, images, targets):
        x = torch.stack([i.flatten() for i in images])
        y = torch.cat([t["y"] for t in targets])
        noise = torch.randn(len(y)) * 0.1
        p = self.lin(x).squeeze(1) + noise
        return {"loss_a": ((p - y) ** 2).mean(), "loss_b": 0.1 * p.abs().mean()}


def _run(out: Path, epochs: int, resume: bool = False, **kw) -> nn.Module:
    seed_everything(123)
    model = ToyModel()
    cfg = TrainConfig(epochs=epochs, lr=0.05, warmup_iters=3, lr_steps=(1,), batch_size=3, progress=False,
                      log_every=2, **kw)
    train(model, ToyData(), out, cfg, resume=resume, model_config={"arch": "toy"})
    return model


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class ConvToy(nn.Module):
    """A convolution, so that ``channels_last`` changes the weights' memory layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.lin = nn.Linear(4, 1)

    def forward(self, images, targets):
        x = self.conv(torch.stack(images)).relu().mean(dim=(2, 3))
        y = torch.cat([t["y"] for t in targets])
        return {"loss": ((self.lin(x).squeeze(1) - y) ** 2).mean()}


def test_channels_last_trains_the_same_weights(tmp_path):
    models = {}
    for cl in (False, True):
        seed_everything(7)
        model = ConvToy()
        cfg = TrainConfig(epochs=2, lr=0.05, warmup_iters=2, batch_size=3, progress=False, channels_last=cl)
        train(model, ToyData(), tmp_path / str(cl), cfg, model_config={"arch": "conv"})
        models[cl] = model
    assert models[True].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not models[False].conv.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(models[False].state_dict().values(), models[True].state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    saved = load_file(str(tmp_path / "True" / "model.safetensors"))  # written contiguous, same values
    assert saved["conv.weight"].is_contiguous() and torch.equal(saved["conv.weight"], models[True].conv.weight.detach())


def test_cosine_schedule_values():
    cfg = TrainConfig(epochs=4, lr=0.1, warmup_iters=0, lr_schedule="cosine", lr_final=0.01)
    assert lr_at(cfg, 0, 0, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 25, 1, 100) == pytest.approx(0.1 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lr_at(cfg, 50, 2, 100) == pytest.approx(0.1 * (0.01 + 0.99 * 0.5))
    assert lr_at(cfg, 100, 3, 100) == pytest.approx(0.001)
    warm = replace(cfg, warmup_iters=10)
    assert lr_at(warm, 5, 0, 100) == pytest.approx(lr_at(cfg, 5, 0, 100) * (0.001 * 0.5 + 0.5))
    with pytest.raises(UserError, match="lr-schedule"):
        TrainConfig(lr_schedule="poly")


def test_the_moving_average_by_hand():
    from rcnn_cli.engine.ema import ModelEMA

    model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.BatchNorm1d(1))
    w0 = model[0].weight.detach().clone()
    ema = ModelEMA(model, decay=0.9, ramp=2)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].num_batches_tracked.fill_(5)
    ema.update(model)
    d1 = 0.9 * (1 - math.exp(-1 / 2))
    want = d1 * w0 + (1 - d1) * 1.0
    assert torch.allclose(ema.average["0.weight"], want)
    assert int(ema.average["1.num_batches_tracked"]) == 5  # integer buffers are copied
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.update(model)
    d2 = 0.9 * (1 - math.exp(-2 / 2))
    want = d2 * want + (1 - d2) * 3.0
    with ema.applied(model):
        assert torch.allclose(model[0].weight, want)
    assert torch.equal(model[0].weight, torch.full_like(w0, 3.0))  # the trained weights are back
    with pytest.raises(UserError, match="--ema"):
        TrainConfig(ema=1.0)


def test_a_run_with_ema_saves_the_average_and_resumes_exactly(tmp_path):
    straight = _run(tmp_path / "a", 2, ema=0.9)
    _run(tmp_path / "b", 2, max_iters=3, ema=0.9)  # stops inside epoch 1
    resumed = _run(tmp_path / "b", 2, resume=True, ema=0.9)
    assert _same(straight, resumed)
    saved = load_file(str(tmp_path / "a" / "model.safetensors"))
    average = load_file(str(tmp_path / "a" / "checkpoint" / "ema.safetensors"))
    trained = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    assert torch.equal(saved["lin.weight"], average["lin.weight"])  # the saved model is the average ...
    assert not torch.equal(saved["lin.weight"], trained["lin.weight"])  # ... not the last step's weights
    with pytest.raises(UserError, match="without --ema"):
        _run(tmp_path / "c", 2, max_iters=3)
        _run(tmp_path / "c", 2, resume=True, ema=0.9)


def test_lr_schedule_values():
    cfg = TrainConfig(lr=0.1, warmup_iters=10, warmup_factor=0.001, lr_steps=(2, 4), lr_gamma=0.1)
    assert lr_at(cfg, 0, 0) == pytest.approx(0.1 * 0.001)
    assert lr_at(cfg, 5, 0) == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))
    assert lr_at(cfg, 10, 0) == pytest.approx(0.1)
    assert lr_at(cfg, 50, 2) == pytest.approx(0.01)
    assert lr_at(cfg, 90, 5) == pytest.approx(0.001)


def test_resume_is_exact_and_files(tmp_path):
    straight = _run(tmp_path / "a", 2)
    _run(tmp_path / "b", 1)
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1 and state["iteration"] == 4 and state["batch_in_epoch"] == 0
    resumed = _run(tmp_path / "b", 2, resume=True)
    assert _same(straight, resumed)
    final = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert torch.equal(final["lin.weight"], straight.lin.weight.detach())
    # optimizer momentum lives in safetensors, everything else in JSON: no pickle anywhere
    opt = load_file(str(tmp_path / "b" / "checkpoint" / "optimizer.safetensors"))
    assert set(opt) == {"0.momentum_buffer", "1.momentum_buffer"}
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["model"] == {"arch": "toy"} and cfg["train"]["epochs"] == 2 and cfg["complete"] is True
    # metrics: the resumed log equals the straight one apart from timings
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "epoch_time_s")}
                       for line in p.read_text().splitlines()]
    a, b = strip(tmp_path / "a" / "metrics.jsonl"), strip(tmp_path / "b" / "metrics.jsonl")
    assert a == b
    iters = [r for r in a if r["type"] == "iter"]
    assert [r["iteration"] for r in iters] == [1, 2, 4, 6, 8]
    assert {"loss", "loss_a", "loss_b", "lr", "epoch"} <= set(iters[0])
    assert iters[0]["loss"] == pytest.approx(iters[0]["loss_a"] + iters[0]["loss_b"], rel=1e-5)
    epochs = [r for r in a if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and iters[-1]["lr"] == pytest.approx(0.005)


def test_resume_mid_epoch_after_max_iters(tmp_path):
    straight = _run(tmp_path / "a", 2)
    _run(tmp_path / "b", 2, max_iters=3)  # stops inside epoch 1 (4 batches per epoch)
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert (state["epoch"], state["iteration"], state["batch_in_epoch"]) == (0, 3, 3)
    resumed = _run(tmp_path / "b", 2, resume=True)
    assert _same(straight, resumed)


def test_interrupted_checkpoint_swap_falls_back(tmp_path):
    _run(tmp_path / "a", 1)
    ckpt = tmp_path / "a" / "checkpoint"
    # a kill between the two renames of a checkpoint swap leaves only checkpoint.old
    ckpt.rename(tmp_path / "a" / "checkpoint.old")
    assert engine.find_checkpoint(tmp_path / "a") == tmp_path / "a" / "checkpoint.old"
    straight = _run(tmp_path / "s", 2)
    resumed = _run(tmp_path / "a", 2, resume=True)
    assert _same(straight, resumed)
    assert (tmp_path / "a" / "checkpoint" / "state.json").is_file()
    assert not (tmp_path / "a" / "checkpoint.old").exists()


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    _run(tmp_path / "a", 1)
    before = (tmp_path / "a" / "checkpoint" / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.checkpoint, "_split_optimizer_state", boom)  # dies in the middle of writing
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "a", 2, resume=True)
    monkeypatch.undo()
    assert (tmp_path / "a" / "checkpoint" / "model.safetensors").read_bytes() == before
    assert json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())["epoch"] == 1
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]


def test_amp_on_cpu_warns_and_trains(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="rcnn")
    rcnn_logger.propagate = True
    try:
        model = _run(tmp_path / "a", 1, amp=True)
    finally:
        rcnn_logger.propagate = False
    assert any("--amp needs CUDA" in r.getMessage() for r in caplog.records)
    assert math.isfinite(float(model.lin.weight.detach().sum()))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError):
            resolve_device("cuda")


# ------------------------------------------------------------------------------------------------
# DetectionDataset


class FakeProposals:
    def __init__(self, boxes: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]]) -> None:
        self._boxes, self._sizes = boxes, sizes

    def __contains__(self, image_id):
        return image_id in self._boxes

    def boxes(self, image_id):
        return self._boxes[image_id]

    def image_size(self, image_id):
        return self._sizes[image_id]


@pytest.fixture()
def tiny_dataset(tmp_path):
    from PIL import Image

    recs = []
    for i, (boxes, labels) in enumerate([
        ([[10, 20, 40, 50], [30, 30, 30, 60], [-5, 0, 20, 10], [200, 200, 220, 220]], ["a", "b", "a", "b"]),
        ([], []),
    ]):
        arr = np.zeros((64, 80, 3), np.uint8)
        arr[:, :40] = 255  # left half white: a flip is visible
        p = tmp_path / f"im{i}.png"
        Image.fromarray(arr).save(p)
        recs.append(ImageRecord(f"im{i}", p, 80, 64, np.asarray(boxes, np.float32).reshape(-1, 4), labels))
    return Dataset(tmp_path, "train", ["a", "b"], recs)


def test_detection_dataset_targets_flips_and_proposals(tiny_dataset):
    props = FakeProposals({"im0": np.array([[0, 0, 20, 20], [70, 10, 90, 30]], np.float32),
                           "im1": np.array([[5, 5, 15, 15]], np.float32)},
                          {"im0": (80, 64), "im1": (40, 32)})  # im1's proposals were made at half size
    ds = DetectionDataset(tiny_dataset, flip=False, proposals=props)
    img, t = ds[0]
    assert img.shape == (3, 64, 80) and float(img.max()) == 1.0
    # zero-area and wholly outside boxes dropped; the one reaching past the border clipped
    np.testing.assert_array_equal(t["boxes"].numpy(), [[10, 20, 40, 50], [0, 0, 20, 10]])
    assert t["labels"].tolist() == [1, 1] and t["image_id"] == "im0"
    np.testing.assert_array_equal(t["proposals"].numpy(), [[0, 0, 20, 20], [70, 10, 80, 30]])
    img1, t1 = ds[1]  # no objects: empty (0, 4) boxes, proposals rescaled to this image's size
    assert t1["boxes"].shape == (0, 4) and t1["labels"].shape == (0,)
    np.testing.assert_array_equal(t1["proposals"].numpy(), [[10, 10, 30, 30]])

    flipped = DetectionDataset(tiny_dataset, flip=True, proposals=props, seed=0)
    seen = set()
    for epoch in range(8):
        flipped.set_epoch(epoch)
        im, tt = flipped[0]
        seen.add(tt["flipped"])
        if tt["flipped"]:
            assert float(im[0, 0, -1]) == 1.0 and float(im[0, 0, 0]) == 0.0
            np.testing.assert_array_equal(tt["boxes"].numpy(), [[40, 20, 70, 50], [60, 0, 80, 10]])
            np.testing.assert_array_equal(tt["proposals"].numpy(), [[60, 0, 80, 20], [0, 10, 10, 30]])
        else:
            assert torch.equal(im, img)
    assert seen == {True, False}
    # deterministic: the same (seed, epoch, index) gives the same flip
    a = [DetectionDataset(tiny_dataset, seed=3).is_flipped(i) for i in range(2)]
    b = [DetectionDataset(tiny_dataset, seed=3).is_flipped(i) for i in range(2)]
    assert a == b


def test_flip_boxes_twice_is_identity():
    boxes = np.array([[1.5, 2, 10, 20], [0, 0, 100, 50]], np.float32)
    once = flip_boxes(boxes, 100)
    np.testing.assert_array_equal(once, [[90, 2, 98.5, 20], [0, 0, 100, 50]])
    np.testing.assert_array_equal(flip_boxes(once, 100), boxes)


def test_training_into_a_log_file_prints_progress_lines_with_an_eta(tmp_path, caplog):
    """stderr is not a terminal (nohup, CI, pytest): one plain line per logged iteration."""
    import logging

    seed_everything(0)
    with caplog.at_level(logging.INFO, logger="rcnn"):
        train(ToyModel(), ToyData(6), tmp_path / "run", TrainConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=0, log_every=1,
                                                       progress=False, device="cpu"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1 iter ")]
    assert [line.split()[3] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("loss " in line and " lr " in line and "img/s" in line and " ETA " in line for line in lines)
    assert lines[-1].endswith("ETA 0m00s")


def test_best_checkpoint_and_early_stop(tmp_path):
    """Validation mAP 0.5, 0.7, 0.6: with patience 1 the run stops after epoch 3 and best/ holds epoch 2."""
    scores = iter([0.5, 0.7, 0.6, 0.9])

    def evaluate_fn(model, epoch):
        return {"mAP": next(scores)}

    def run(out, epochs, **kw):
        seed_everything(123)
        model = ToyModel()
        cfg = TrainConfig(epochs=epochs, lr=0.05, warmup_iters=0, lr_steps=(), batch_size=3, progress=False, **kw)
        return train(model, ToyData(), out, cfg, evaluate_fn=evaluate_fn if "patience" in kw else None)

    summary = run(tmp_path / "a", 6, patience=1)
    assert summary["epochs"] == 3 and summary["stopped_early"] is True
    assert summary["best"] == {"value": 0.7, "epoch": 2, "since": 1, "metric": "mAP"}
    run(tmp_path / "b", 2)  # the same run without validation, stopped after epoch 2
    best = load_file(str(tmp_path / "a" / "best" / "model.safetensors"))
    two = load_file(str(tmp_path / "b" / "model.safetensors"))
    final = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert all((best[k] == two[k]).all() for k in two) and not all((final[k] == two[k]).all() for k in two)
    record = json.loads((tmp_path / "a" / "config.json").read_text())
    assert record["complete"] is True and record["summary"]["best"]["epoch"] == 2
    with pytest.raises(UserError, match="--patience"):
        TrainConfig(patience=0)


def test_plot_curves_and_tensorboard_error(tmp_path, monkeypatch):
    from rcnn_cli.cli import main

    summary = _run(tmp_path / "run", 2)
    assert summary is not None
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path / "run")])
    assert e.value.code == 0
    from PIL import Image

    assert Image.open(tmp_path / "run" / "curves.png").size[0] > 500
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path / "nowhere")])
    assert e.value.code == 2
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UserError, match="tensorboard package"):
        train(ToyModel(), ToyData(), tmp_path / "tb", TrainConfig(epochs=1, progress=False, tensorboard=True))


class SigintData(ToyData):
    """Sends the process a real SIGINT while loading item ``at`` of the first epoch."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.sent = at, False

    def __getitem__(self, i: int):
        if len(self.epochs) == 1 and i == self.at and not self.sent:
            import os
            import signal

            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return super().__getitem__(i)


def test_sigint_stops_after_the_iteration_checkpoints_and_resumes_exactly(tmp_path):
    from rcnn_cli.errors import Interrupted

    straight = _run(tmp_path / "a", 2)
    seed_everything(123)
    model = ToyModel()
    cfg = TrainConfig(epochs=2, lr=0.05, warmup_iters=3, lr_steps=(1,), batch_size=3, progress=False, log_every=2)
    torch.manual_seed(0)
    order = list(torch.utils.data.DistributedSampler(ToyData(), num_replicas=1, rank=0, seed=0).__iter__())
    with pytest.raises(Interrupted, match=r"stopped at iteration 2 of 8 \(epoch 1/2\); checkpoint .*checkpoint") as e:
        train(model, SigintData(at=order[4]), tmp_path / "b", cfg, model_config={"arch": "toy"})  # 2nd batch
    assert e.value.resumable
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert (state["epoch"], state["iteration"], state["batch_in_epoch"]) == (0, 2, 2)
    assert not (tmp_path / "b" / "model.safetensors").exists()  # only a finished run writes the model
    assert json.loads((tmp_path / "b" / "config.json").read_text())["complete"] is False
    resumed = _run(tmp_path / "b", 2, resume=True)
    assert _same(straight, resumed)
