"""RobustBench both ways: its reported accuracies of a zoo model next to ours (the real Wong2020Fast entry), and
leaderboard entries of our models in its model_info format."""

import json
import os

import numpy as np
import pytest
from scipy.stats import beta, binomtest

from benchmarks.__main__ import main
from benchmarks.leaderboard import ENTRY_FIELDS, check_against_reported, leaderboard_entry, slug
from benchmarks.outcomes import pack
from benchmarks.report import write_reports


def result(correct, n, images="h1000", max_eps=8 / 255):
    survived = np.r_[np.ones(correct, bool), np.zeros(n - correct, bool)]
    return {"accuracy": correct / n, "correct": correct, "n": n, "images": images, "max_eps": max_eps,
            "seconds": 1.0, "survived": pack(survived)}


def write_eval(root, kind, name, config, results, run=None):
    folder = root / kind / name
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"config": config, "results": results, "partial": {}}))
    if run is not None:
        (folder / "run.json").write_text(json.dumps(run))


def zoo(root, name, results):
    write_eval(root, "zoo", f"cifar10-Linf-{name}", {"source": "zoo", "label": name, "train_seed": 0,
                                                      "dataset": "cifar10", "threat_model": "Linf", "eps": 8 / 255,
                                                      "seed": 0, "weights": "0" * 16, "batch_size": 100,
                                                      "surrogate": None}, results)


@pytest.fixture
def model_info(data_dir):
    path = os.path.join(data_dir, "robustbench-model-info")
    assert os.path.isdir(path), path
    return path


def _clopper_pearson(k, n):
    """The exact interval from its beta-quantile closed form (independent of binomtest's proportion_ci)."""
    return (beta.ppf(0.025, k, n - k + 1) if k else 0.0, beta.ppf(0.975, k + 1, n - k) if k < n else 1.0)


def test_reported_vs_measured_flags_only_differences_beyond_sampling_error(tmp_path, model_info):
    with open(os.path.join(model_info, "cifar10", "Linf", "Wong2020Fast.json")) as f:
        reported = json.load(f)
    assert (reported["clean_acc"], reported["autoattack_acc"]) == ("83.34", "43.21")
    # clean 830 / 1000 = 83.0% (0.34 points off: well within the sampling error of 1000 images);
    # AA 380 / 1000 = 38.0% (5.2 points off: not)
    zoo(tmp_path, "Wong2020Fast", {"natural": result(830, 1000, max_eps=0.0), "aa": result(380, 1000)})
    zoo(tmp_path, "NotOnTheLeaderboard", {"natural": result(900, 1000, max_eps=0.0)})
    rows, text = write_reports(str(tmp_path), model_info=model_info)
    wong = next(r for r in rows if r["label"] == "Wong2020Fast")["robustbench"][0]
    assert wong["entry"] and [c["metric"] for c in wong["checks"]] == ["clean", "AutoAttack"]
    clean, aa = wong["checks"]
    assert (clean["reported"], clean["measured"], clean["n"]) == (83.34, 0.83, 1000)
    assert clean["p"] == pytest.approx(binomtest(830, 1000, 0.8334).pvalue) and clean["p"] > 0.05
    assert not clean["flagged"]
    assert (clean["low"], clean["high"]) == pytest.approx(_clopper_pearson(830, 1000))
    assert aa["p"] == pytest.approx(binomtest(380, 1000, 0.4321).pvalue) and aa["p"] < 0.05 and aa["flagged"]
    assert (aa["low"], aa["high"]) == pytest.approx(_clopper_pearson(380, 1000))
    lines = text.splitlines()
    assert "### RobustBench: reported vs measured" in lines
    clean_line = next(line for line in lines if line.startswith("| Wong2020Fast | clean |"))
    assert "| 83.34 | 83.00 |" in clean_line and "consistent" in clean_line
    aa_line = next(line for line in lines if line.startswith("| Wong2020Fast | AutoAttack |"))
    assert "| 43.21 | 38.00 |" in aa_line and "differs by more than sampling error" in aa_line
    assert "| NotOnTheLeaderboard | - | no RobustBench entry |" in text
    csv_text = (tmp_path / "report" / "comparison.csv").read_text()
    assert csv_text.count(",robustbench,") == 2


def test_check_against_reported_is_scipys_exact_binomial_test():
    check = check_against_reported(45, 100, 50.0)
    assert check["p"] == pytest.approx(binomtest(45, 100, 0.5).pvalue)
    assert not check["flagged"] and (check["low"], check["high"]) == pytest.approx(_clopper_pearson(45, 100))
    assert check_against_reported(35, 100, 50.0)["flagged"]


def test_compare_model_info_on_the_command_line(tmp_path, model_info, capsys):
    zoo(tmp_path, "Wong2020Fast", {"natural": result(830, 1000, max_eps=0.0), "aa": result(380, 1000)})
    assert main(["compare", "--out", str(tmp_path), "--model-info", model_info]) == 0
    out = capsys.readouterr().out
    assert "RobustBench: reported vs measured" in out and "| Wong2020Fast | AutoAttack | 43.21 | 38.00 |" in out


def test_a_missing_model_info_folder_is_a_usage_error_before_any_work(tmp_path, capsys):
    zoo(tmp_path, "Wong2020Fast", {"natural": result(830, 1000, max_eps=0.0)})
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--out", str(tmp_path), "--model-info", str(tmp_path / "no-such-folder")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--model-info" in err and "no-such-folder" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report").exists()


def _ours(root, label, method, seed, natural, aa=None, n=500, model="resnet18"):
    results = {"natural": result(natural, n, images=f"h{n}", max_eps=0.0)}
    if aa is not None:
        results["aa"] = result(aa, n, images=f"h{n}")
    write_eval(root, "runs", f"{slug(label)}-seed{seed}",
               {"source": "ours", "label": label, "train_seed": seed, "dataset": "cifar10", "eps": 8 / 255,
                "seed": 0, "weights": "1" * 16, "batch_size": 100, "surrogate": None}, results,
               run={"label": label, "seed": seed, "order": 0 if method == "at" else 1,
                    "spec": {"method": method, "eps": 8 / 255, "eps_low": 7 / 255},
                    "settings": {"model": model, "dataset": "cifar10"}})


def test_leaderboard_entries_of_our_models_round_trip_in_robustbench_format(tmp_path, model_info):
    _ours(tmp_path, "PART (s=1)", "part", 0, natural=420, aa=200)
    _ours(tmp_path, "PART (s=1)", "part", 1, natural=430, aa=210)
    _ours(tmp_path, "AT", "at", 0, natural=400)  # no AutoAttack evaluated
    write_reports(str(tmp_path))
    folder = tmp_path / "report" / "leaderboard"
    assert sorted(os.listdir(folder)) == ["at.json", "part-s-1.json"]
    entry = json.loads((folder / "part-s-1.json").read_text())
    with open(os.path.join(model_info, "cifar10", "Linf", "Wong2020Fast.json")) as f:
        theirs = json.load(f)
    assert list(entry) == list(ENTRY_FIELDS) and set(entry) == set(theirs)  # RobustBench's field names
    for field in ("link", "name", "authors", "dataset", "venue", "architecture", "eps", "clean_acc", "reported",
                  "autoattack_acc", "footnote"):
        assert type(entry[field]) is type(theirs[field]), field
    assert entry["additional_data"] is False and entry["number_forward_passes"] == 1
    assert (entry["clean_acc"], entry["autoattack_acc"], entry["reported"]) == ("85.00", "41.00", "41.00")
    assert (entry["architecture"], entry["eps"], entry["dataset"]) == ("ResNet-18", "8/255", "cifar10")
    assert entry["link"] == "https://arxiv.org/abs/2406.00685" and entry["venue"] == "ICML 2024"
    footnote = entry["footnote"]
    assert "2 training seeds (0, 1)" in footnote and "first 500 of the 10000" in footnote
    assert "pyautoattack" in footnote and "standard" in footnote and "not the authors' checkpoint" in footnote
    # RobustBench's own reading of an entry (robustbench.utils: accuracies as floats, the Linf accuracy field)
    from benchmarks.robustbench_compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo.enums import ThreatModel
    from robustbench.utils import ACC_FIELDS, get_key

    assert get_key(entry, ACC_FIELDS[ThreatModel.Linf]) == 41.0 and float(entry["clean_acc"]) == 85.0
    at = json.loads((folder / "at.json").read_text())
    assert at["autoattack_acc"] is None and "AutoAttack (pyautoattack" in at["footnote"]
    assert "not evaluated" in at["footnote"] and at["name"] == theirs_name_of_madry(model_info)


def theirs_name_of_madry(model_info):
    with open(os.path.join(model_info, "cifar10", "Linf", "Madry2018Towards.json")) as f:
        return json.load(f)["name"]


def test_leaderboard_entry_without_run_settings():
    row = {"label": "mine", "kind": "ours", "seeds": [0], "spec": None, "settings": None, "dataset": "cifar10",
           "eps": 8 / 255, "values": {"natural": {"mean": 0.9, "std": None, "n_seeds": 1, "n": [10000]},
                                      "aa": {"mean": 0.5, "std": None, "n_seeds": 1, "n": [10000]}}}
    entry = leaderboard_entry(row)
    assert entry["architecture"] == "unknown" and entry["name"] == "mine"
    assert "first 10000 cifar10 test images" in entry["footnote"] and "subset" not in entry["footnote"]
    assert json.loads(json.dumps(entry)) == entry
