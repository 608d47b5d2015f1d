"""What the registry knows of Overfeat: its :class:`rcnn_cli.method.Method` (detector, ``rcnn compare`` column)."""

from __future__ import annotations

from typing import Any, Mapping

from rcnn_cli.method import CompareEntry, Method, measured, schedule_text
from rcnn_cli.models.overfeat.config import NAME, OverfeatConfig
from rcnn_cli.models.overfeat.train import train_overfeat
from rcnn_cli.models.overfeat.detector import OverfeatDetector


def _compare_step(c) -> None:
    """``rcnn compare``: window training, dense detection over scales chosen from the training boxes."""
    from rcnn_cli.detector import DetectConfig
    from rcnn_cli.io.runs import model_config

    V, D, d = c.settings[NAME], c.settings["detect"], c.data
    run_dir = c.out / NAME
    config = c.stage_config({"V": V, "D": D})

    def train(resume: bool) -> dict:
        model = OverfeatConfig(**{k: V[k] for k in ("input_size", "offsets", "merge")}, backbone=c.backbone,
                               weights=c.settings["model"]["weights"])
        return train_overfeat(d.path, d.train_split, run_dir, model, c.train_config(V), images=d.images,
                              resume=resume, command=f"{c.command} ({NAME})")

    result = c.train_and_evaluate(
        NAME, config, run_dir, train,
        lambda: OverfeatDetector.from_run(run_dir, device=c.device, config=DetectConfig(**D)))
    result["scales"] = model_config(run_dir, NAME, OverfeatConfig).scales
    c.results[NAME] = result


def _describe(s: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    V = s[NAME]
    return (f"- Overfeat: {V['input_size']}-px windows at a stride of 32 px (FC layers as convolutions), "
            f"scales {report['results'][NAME].get('scales')} (chosen from the training boxes), offsets "
            f"{V['offsets']}, {V['merge']} merge; {schedule_text(V, ' images')}")


def _claim(report: Mapping[str, Any]) -> str | None:
    """The R-CNN paper: region proposals + CNN features beat Overfeat's dense sliding window."""
    maps = measured(report, (NAME, "rcnn"), "mAP", "voc12")
    if maps is None:
        return None
    mo, mc = maps
    return (f"- R-CNN paper: region proposals + CNN features beat Overfeat's dense sliding window at detection "
            f"(ILSVRC 2013: 31.4 vs 24.3 mAP). Here: R-CNN {100 * mc:.1f} vs Overfeat {100 * mo:.1f} mAP (VOC12)"
            f" -> {'holds' if mc > mo else 'does not hold'}.")


#: ``rcnn compare``'s settings per budget.
COMPARE_SETTINGS = {
    "quick": {"input_size": 224, "offsets": [0], "merge": "greedy", "epochs": 6, "lr": 0.002, "lr_steps": [5],
              "warmup_iters": 20, "batch_size": 4, "max_iters": None},
    "full": {"input_size": 224, "offsets": [0, 16], "merge": "greedy", "epochs": 16, "lr": 0.002,
             "lr_steps": [12], "warmup_iters": 50, "batch_size": 4, "max_iters": None},
}

METHOD = Method(
    name=NAME, title="Overfeat", detector=OverfeatDetector, config=OverfeatConfig,
    compare=CompareEntry(
        settings=COMPARE_SETTINGS, step=_compare_step, describe=_describe, claim=_claim,
        input_text=lambda s, result: f"{s[NAME]['input_size']}-px windows, {len(result.get('scales', []))} scales",
        proposals=lambda s: "none (every window, stride 32)"))
