"""What the package knows of one detection method, in one object.

Each method's module defines one :class:`Method` (``METHOD``) and :mod:`rcnn_cli.registry` lists
them, once. Everything that used to switch on a kind (loading a run's detector, export, ``rcnn
compare``'s steps and table, the run reader's format-1 names) asks the method instead, so a new
method is its own module, one registry line and its CLI module.

The method's ``name`` is its one vocabulary: the ``kind`` in a run's ``config.json``, its command
group (``rcnn faster ...``), its folder and key in ``rcnn compare``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

#: The backbone every CNN method starts from unless told otherwise (offline ImageNet weights; rcnn_cli.backbones).
DEFAULT_BACKBONE = "efficientnet_lite0"

__all__ = ["Method", "Export", "CompareEntry", "ModelConfig", "resize_text", "schedule_text", "measured"]


@dataclass
class ModelConfig:
    """What every method's model configuration (the run's ``model`` record) starts with: the classes,
    the backbone and the weights it started from (``imagenet``, ``none`` or a file; ``weights_id``
    names them exactly), the record's ``kind`` and ``version``. A subclass adds its own settings and
    gives ``kind`` and ``version`` their values."""

    classes: list[str] = field(default_factory=list)
    backbone: str = DEFAULT_BACKBONE
    kind: str = ""
    version: int = 1
    weights: str = "imagenet"
    weights_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """From a run's record (settings this version does not know are left out)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Export:
    """How ``rcnn export`` writes a method's network.

    ``network(run) -> (module, example input, description)``: the CNN a deployment runs (a trunk,
    R-CNN's region network, YOLO's whole network). ``batched``: that network takes fixed-size inputs
    in batches (else one image of any size). ``whole(run) -> (module, example inputs, test-time
    settings with the normalisation, model config)``: the whole detector as one graph (an image in;
    boxes, scores, labels out), ``whole_inputs`` its input names; ``whole_by_default``: ``--part``
    omitted exports the whole detector.
    """

    network: Callable[[Any], tuple[Any, Any, dict[str, Any]]] | None = None
    batched: bool = False
    whole: Callable[[Any], tuple[Any, tuple, dict[str, Any], Any]] | None = None
    whole_inputs: tuple[str, ...] = ("image",)
    whole_by_default: bool = False


@dataclass(frozen=True)
class CompareEntry:
    """A method's column in ``rcnn compare``.

    ``settings``: ``{budget: {key: value}}`` (``quick`` and ``full``); ``step(ctx)`` trains and
    evaluates into ``ctx.results[name]`` (``ctx``: :class:`rcnn_cli.workflows.compare.Context`);
    ``input_text(settings, result)`` and ``describe(settings, report)`` are its table cell and its
    line under the table; ``proposals(settings)`` names where its regions come from (``None``: the
    shared selective-search files); ``claim(report)`` is the lecture's claim it checks (or ``None``);
    ``timed(ctx) -> (model hash, run directory)`` and ``detect_options(settings)`` say what the timing
    child loads; ``provides_proposals``: its step writes the shared proposals files (R-CNN's
    pipeline); ``reference``: the method whose time the speedups divide.
    """

    settings: Mapping[str, Mapping[str, Any]]
    step: Callable[[Any], None]
    input_text: Callable[[Mapping[str, Any], Mapping[str, Any]], str]
    describe: Callable[[Mapping[str, Any], Mapping[str, Any]], str]
    proposals: Callable[[Mapping[str, Any]], str] | None = None
    claim: Callable[[Mapping[str, Any]], str | None] | None = None
    timed: Callable[[Any], tuple[Any, Any]] | None = None
    detect_options: Callable[[Mapping[str, Any]], dict[str, Any]] = field(default=lambda settings: {})
    provides_proposals: bool = False
    reference: bool = False
    runtime: bool = True


@dataclass(frozen=True)
class Method:
    """One detection method (see the module docstring).

    ``detector``: its :class:`rcnn_cli.detector.Detector` subclass (``None`` for a run that is not a
    detector); ``config``: its model configuration class; ``legacy``: the kinds format-1 runs wrote;
    ``named(model)``: for detectors without a run directory (an exported ``.onnx``, a pretrained
    name), whether ``model`` names one; ``backbone(run) -> (trunk, head)``: the trained layers
    ``rcnn finetune export-backbone`` takes; ``export`` and ``compare`` as above.
    """

    name: str
    title: str
    detector: type | None = None
    config: type | None = None
    legacy: tuple[str, ...] = ()
    named: Callable[[str], bool] | None = None
    backbone: Callable[[Any], tuple[Any, Any]] | None = None
    export: Export | None = None
    compare: CompareEntry | None = None


def measured(report: Mapping[str, Any], names: tuple[str, ...], *path: str) -> list[float] | None:
    """``report["results"][name][path...]`` of each of ``names``, or ``None`` when a method was not run
    or a figure is missing (a claim is then left out)."""
    if any(n not in report["methods"] for n in names):
        return None
    values = []
    for n in names:
        v: Any = report["results"].get(n, {})
        for key in path:
            v = v.get(key) if isinstance(v, Mapping) else None
        if v is None:
            return None
        values.append(float(v))
    return values


def schedule_text(s: Mapping[str, Any], unit: str = "") -> str:
    """A training schedule (``epochs``, ``lr``, ``lr_steps``, ``batch_size``, ``max_iters``) as ``rcnn
    compare`` states it; ``unit``: what a batch counts (e.g. `` images``)."""
    text = f"{s['epochs']} epochs, lr {s['lr']} (x0.1 at epochs {s['lr_steps']}), batch {s['batch_size']}{unit}"
    return text + (f", at most {s['max_iters']} iterations" if s.get("max_iters") else "")


def resize_text(s: Mapping[str, Any], short: bool = True) -> str:
    """A resize setting (``min_size``, ``max_size``) as ``rcnn compare`` states it."""
    if short:
        return f"{s['min_size']}/{s['max_size']} px"
    return f"shorter side {s['min_size']}, longer <= {s['max_size']}"
