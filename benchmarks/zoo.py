"""RobustBench model-zoo models from a local model folder, with no download unless asked for.

:func:`load_zoo_model` wraps ``robustbench.utils.load_model`` (RobustBench 1.1.1), which reads
``<model_dir>/<dataset>/<threat_model>/<name>.pt`` (an ensemble: ``<name>.pt_m0.pt``, ``<name>.pt_m1.pt``, ...) and
downloads it from Google Drive when it is missing. Here every argument is checked first (dataset and threat model
against RobustBench's enums, the name against its zoo, with close names suggested), and a missing checkpoint raises
``FileNotFoundError`` naming the exact path to put it at, unless ``download=True``: on an offline machine the
download would otherwise fail late, or hang.

Zoo models take images in [0, 1]: each one's input normalisation, if any, is inside the model.

Loading is weights-only (no arbitrary unpickling): RobustBench calls ``torch.load`` without ``weights_only``, which is
``True`` by default from torch 2.6 on; with an older torch (or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set) this module
first loads each checkpoint with ``weights_only=True`` itself, so a file that would run code is refused either way.

Example::

    >>> model = load_zoo_model("Wong2020Fast", model_dir="models", device="cuda")  # models/cifar10/Linf/...
    >>> zoo_description("Wong2020Fast")["architecture"]
    'Wong2020FastNet(PreActResNet)'
"""

import difflib
import inspect
import os
import pickle
from pathlib import Path

import torch

from .robustbench_compat import import_robustbench

__all__ = ["checkpoint_paths", "load_zoo_model", "zoo_description", "zoo_names"]


def _enums():
    import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return BenchmarkDataset, ThreatModel


def _resolve(dataset, threat_model):
    """(dataset enum, threat enum, zoo dict) for ``dataset`` and ``threat_model`` (strings or enums), or ValueError."""
    BenchmarkDataset, ThreatModel = _enums()
    from robustbench.model_zoo.models import model_dicts

    datasets = [d.value for d in BenchmarkDataset]
    try:
        dataset_ = BenchmarkDataset(dataset)
    except ValueError:
        raise ValueError(f"dataset must be one of {datasets}, got {dataset!r}") from None
    threats = [t.value for t in ThreatModel]
    try:
        threat_ = ThreatModel(threat_model)
    except ValueError:
        raise ValueError(f"threat_model must be one of {threats}, got {threat_model!r}") from None
    # As load_model does: the 3D corruption models are those of the corruptions folder.
    threat_ = ThreatModel(threat_.value.replace("_3d", ""))
    if threat_ not in model_dicts[dataset_]:
        available = [t.value for t in model_dicts[dataset_]]
        raise ValueError(f"threat_model must be one of {available} for dataset {dataset_.value!r}, "
                         f"got {threat_model!r}")
    return dataset_, threat_, model_dicts[dataset_][threat_]


def zoo_names(dataset="cifar10", threat_model="Linf"):
    """The model names of RobustBench's zoo for a dataset and threat model, in the zoo's order."""
    return list(_resolve(dataset, threat_model)[2])


def _entry(name, dataset, threat_model):
    dataset_, threat_, models = _resolve(dataset, threat_model)
    if not isinstance(name, str) or name not in models:
        names = list(models)
        close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
        close += [n for n in names if str(name).lower() in n.lower() and n not in close][:5 - len(close)]
        hint = f"close names: {close}" if close else f"names include {names[:5]}"
        raise ValueError(f"name must be a model of RobustBench's {dataset_.value}/{threat_.value} zoo "
                         f"({len(names)} models; zoo_names() lists them), got {name!r}; {hint}")
    return dataset_, threat_, models[name]


def checkpoint_paths(name, model_dir="models", dataset="cifar10", threat_model="Linf"):
    """The checkpoint file(s) ``load_model`` reads for ``name``: one path, or one per member of an ensemble.

    An empty list for the models whose weights RobustBench takes from a hub (timm, torchvision) instead.
    """
    dataset_, threat_, entry = _entry(name, dataset, threat_model)
    if _hub_weights(name, dataset_, threat_, entry):
        return []
    base = Path(model_dir) / dataset_.value / threat_.value / f"{name}.pt"
    if isinstance(entry["gdrive_id"], list):
        return [Path(f"{base}_m{i}.pt") for i in range(len(entry["gdrive_id"]))]
    return [base]


def _hub_weights(name, dataset_, threat_, entry):
    """"timm" or "torchvision" when ``load_model`` takes the weights from that hub, not from model_dir; else None.

    The same tests as ``load_model``: a timm model named after the zoo entry, an ImageNet "Standard" model (a
    torchvision network built with ``pretrained=True``), or an entry with no checkpoint id.
    """
    import timm

    timm_name = f"{name.lower().replace('-', '_')}_{dataset_.value.lower()}_{threat_.value.lower()}"
    if timm.is_model(timm_name) or entry["gdrive_id"] is None:
        return "timm"
    if dataset_.value == "imagenet" and "Standard" in name:
        return "torchvision"
    return None


def _weights_only_by_default():
    """Whether a plain ``torch.load(path)`` (RobustBench's call) refuses pickled code."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    forced_off = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "true", "y", "yes")
    return (major, minor) >= (2, 6) and not forced_off


def load_zoo_model(name, model_dir="models", dataset="cifar10", threat_model="Linf", device="cpu",
                   download=False):
    r"""
    A RobustBench zoo model [https://robustbench.github.io], from ``<model_dir>/<dataset>/<threat_model>/<name>.pt``.

    Arguments:
        name (str): the model's name in the zoo, e.g. "Wong2020Fast" (see :func:`zoo_names`).
        model_dir (str or Path): the folder holding ``<dataset>/<threat_model>/`` checkpoints. (Default: "models")
        dataset (str): "cifar10", "cifar100" or "imagenet". (Default: "cifar10")
        threat_model (str): "Linf", "L2", "corruptions" or "corruptions_3d" (same models as "corruptions").
            (Default: "Linf")
        device (torch.device or str): where the model goes. (Default: "cpu")
        download (bool): let RobustBench download a missing checkpoint (Google Drive through gdown; timm's or
            torchvision's hub for the few models whose weights live there). False: a missing file raises
            ``FileNotFoundError`` naming the path to put it at, and nothing touches the network. (Default: False)

    Shape:
        - input of the returned model: :math:`(N, 3, H, W)` images in [0, 1] (32x32 for CIFAR; the model normalises).
        - output: :math:`(N, K)` logits.

    Returns the model in eval mode, on ``device``.

    Examples::
        >>> model = load_zoo_model("Wong2020Fast", model_dir="models")
        >>> logits = model(images)
    """
    dataset_, threat_, entry = _entry(name, dataset, threat_model)
    if not isinstance(model_dir, (str, os.PathLike)):
        raise ValueError(f"model_dir must be a path (str or os.PathLike), got {model_dir!r}")
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device or a device string such as 'cpu' or 'cuda', "
                         f"got {device!r}") from None

    hub = _hub_weights(name, dataset_, threat_, entry)
    if hub and not download:
        raise ValueError(f"download must be True to load {name!r}: RobustBench takes its weights from {hub}'s hub "
                         f"(cached under {torch.hub.get_dir()} or the Hugging Face cache), not from model_dir")
    paths = checkpoint_paths(name, model_dir, dataset_.value, threat_.value)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing and not download:
        raise FileNotFoundError(f"no checkpoint for {name!r}: put it at {', '.join(missing)} (RobustBench's file "
                                f"for {dataset_.value}/{threat_.value}), or pass download=True to fetch it")
    if not _weights_only_by_default():
        for path in paths:
            if path.is_file():
                try:
                    torch.load(path, map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as error:
                    raise ValueError(f"checkpoint {path} holds more than weights; refusing to unpickle it") \
                        from error

    from robustbench.utils import load_model

    model = load_model(model_name=name, model_dir=model_dir, dataset=dataset_.value, threat_model=threat_.value)
    return model.to(device).eval()


def _architecture(constructor):
    """A short text for the zoo entry's constructor: a class (with its base), a function name or a lambda's body."""
    if inspect.isclass(constructor):
        bases = [b.__name__ for b in constructor.__bases__ if b is not torch.nn.Module and b is not object]
        return f"{constructor.__name__}({', '.join(bases)})" if bases else constructor.__name__
    if getattr(constructor, "__name__", "") != "<lambda>":
        return getattr(constructor, "__name__", repr(constructor))
    try:
        source = " ".join(inspect.getsource(constructor).split())
    except (OSError, TypeError):
        return "lambda"
    body = source[source.index("lambda:") + len("lambda:"):].strip().replace("( ", "(").replace(", )", ")")
    depth = 0
    for i, char in enumerate(body):
        depth += char in "([{"
        depth -= char in ")]}"
        if depth < 0 or (depth == 0 and char in ",)]}" and i > 0 and "(" in body[:i]):
            return body[:i + (char in ")]}" and depth == 0)].strip()
    return body


def zoo_description(name, dataset="cifar10", threat_model="Linf"):
    """What RobustBench's zoo says about a model, without building it or touching the network.

    Returns a dict: ``name``, ``dataset``, ``threat_model`` (the zoo's folder), ``architecture`` (the entry's
    constructor: class, function or lambda body), ``weights`` ("checkpoint" in model_dir, or the hub: "timm",
    "torchvision"), ``checkpoint`` (the file(s) relative to model_dir; ensembles have several), ``ensemble`` and
    ``preprocessing`` (ImageNet entries; None otherwise). RobustBench's wheel carries no model cards (paper, clean
    and AutoAttack accuracies live in the ``model_info/`` JSON files of its repository), so there is no paper here.
    """
    dataset_, threat_, entry = _entry(name, dataset, threat_model)
    hub = _hub_weights(name, dataset_, threat_, entry)
    return {
        "name": name,
        "dataset": dataset_.value,
        "threat_model": threat_.value,
        "architecture": _architecture(entry["model"]),
        "weights": hub or "checkpoint",
        "checkpoint": [str(p) for p in checkpoint_paths(name, "", dataset_.value, threat_.value)],
        "ensemble": isinstance(entry["gdrive_id"], list),
        "preprocessing": entry.get("preprocessing"),
    }
