"""RobustBench zoo models from a local folder (benchmarks.zoo), offline.

The zoo entry "Wong2020Fast" (Wong et al., 'Fast is better than free', ICLR 2020: a PreActResNet-18 with the CIFAR-10
normalisation inside) is built from RobustBench's own constructor, given seeded random weights, saved where
``robustbench.utils.load_model`` looks for it, and loaded back through :func:`benchmarks.zoo.load_zoo_model`.
"""

import argparse
import pickle

import pytest
import torch

from benchmarks.robustbench_compat import import_robustbench
from benchmarks.zoo import checkpoint_paths, load_zoo_model, zoo_description, zoo_names

NAME = "Wong2020Fast"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails the test at once instead of reaching (or waiting for) the network."""
    import_robustbench()
    import robustbench.utils

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", refuse)
    monkeypatch.setattr(robustbench.utils, "download_gdrive", refuse)


def _zoo_constructor(name=NAME):
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.model_zoo.models import model_dicts

    return model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]


def _random_model(seed):
    torch.manual_seed(seed)
    model = _zoo_constructor()()
    with torch.no_grad():  # non-default BatchNorm statistics too, so that every buffer is checked
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _save(model, root, wrapped):
    path = root / "cifar10" / "Linf" / f"{NAME}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if wrapped:  # as saved from DataParallel inside a training checkpoint
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("wrapped", [True, False], ids=["state_dict-module-prefix", "plain"])
def test_loads_saved_weights_and_matches_the_built_model(tmp_path, cifar_batch, wrapped):
    built = _random_model(seed=0)
    assert type(built).__name__ == "Wong2020FastNet"
    _save(built, tmp_path, wrapped)

    loaded = load_zoo_model(NAME, model_dir=tmp_path, dataset="cifar10", threat_model="Linf", device="cpu")
    assert not loaded.training and type(loaded) is type(built)
    expected = built.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    images, _ = cifar_batch  # [0, 1] images: the model normalises them itself (its mu / sigma buffers)
    with torch.no_grad():
        logits = loaded(images)
        assert logits.shape == (images.shape[0], 10)
        torch.testing.assert_close(logits, built(images), rtol=0, atol=0)
        other = _random_model(seed=1)(images)
    assert not torch.allclose(logits, other)  # the weights matter: a loader that kept its own init would fail


def test_unknown_name_lists_close_names(tmp_path):
    with pytest.raises(ValueError, match=r"name must be .*'Wong2020Fast'"):
        load_zoo_model("Wong2020fast", model_dir=tmp_path)
    with pytest.raises(ValueError, match="name"):
        load_zoo_model("NoSuchModel2099", model_dir=tmp_path)


def test_missing_checkpoint_names_the_path_and_does_not_download(tmp_path):
    expected = tmp_path / "cifar10" / "Linf" / f"{NAME}.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_zoo_model(NAME, model_dir=tmp_path)
    assert str(expected) in str(info.value) and "download=True" in str(info.value)
    assert checkpoint_paths(NAME, tmp_path) == [expected]
    ensemble = checkpoint_paths("Chen2020Adversarial", tmp_path)
    assert [p.name for p in ensemble] == [f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)]
    with pytest.raises(FileNotFoundError, match="Chen2020Adversarial.pt_m0.pt"):
        load_zoo_model("Chen2020Adversarial", model_dir=tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    ({"threat_model": "L3"}, r"threat_model must be one of \['Linf', 'L2', 'corruptions', 'corruptions_3d'\]"),
    ({"dataset": "mnist"}, r"dataset must be one of \['cifar10', 'cifar100', 'imagenet'\]"),
    ({"dataset": "cifar100", "threat_model": "L2"}, r"threat_model must be one of \['Linf', 'corruptions'\]"),
    ({"device": "nonsense"}, "device"),
    ({"download": "yes"}, "download"),
])
def test_bad_arguments_raise_naming_them(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_zoo_model(NAME, model_dir=tmp_path, **kwargs)


def test_hub_weights_need_download(tmp_path):
    with pytest.raises(ValueError, match="download must be True.*timm"):
        load_zoo_model("Debenedetti2022Light_XCiT-S12", model_dir=tmp_path)


@pytest.mark.parametrize("old_torch", [False, True], ids=["robustbench-torch-load", "own-check"])
def test_checkpoint_with_pickled_objects_is_refused(tmp_path, monkeypatch, old_torch):
    """RobustBench's torch.load is weights-only (torch >= 2.6 default); on an older torch zoo.py checks first."""
    import benchmarks.zoo

    assert benchmarks.zoo._weights_only_by_default()  # torch 2.14 here: RobustBench's own torch.load refuses it
    if old_torch:
        monkeypatch.setattr(benchmarks.zoo, "_weights_only_by_default", lambda: False)
    path = _save(_random_model(seed=0), tmp_path, wrapped=False)
    state = torch.load(path, weights_only=True)
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)
    expected = (ValueError, "more than weights") if old_torch else (pickle.UnpicklingError, "Weights only load")
    with pytest.raises(expected[0], match=expected[1]):
        load_zoo_model(NAME, model_dir=tmp_path)


def test_zoo_description_and_names():
    description = zoo_description(NAME)
    assert description["architecture"] == "Wong2020FastNet(PreActResNet)"
    assert description["weights"] == "checkpoint" and description["checkpoint"] == ["cifar10/Linf/Wong2020Fast.pt"]
    assert not description["ensemble"]
    assert zoo_description("Andriushchenko2020Understanding")["architecture"] == \
        "PreActResNet(PreActBlock, [2, 2, 2, 2])"
    assert zoo_description("Standard_R50", "imagenet")["weights"] == "torchvision"
    assert zoo_description("Chen2020Adversarial")["ensemble"]
    names = zoo_names()
    assert NAME in names and len(names) == len(set(names)) > 50
    assert "Standard" in zoo_names("cifar10", "corruptions_3d")  # the corruptions folder, as load_model reads it
