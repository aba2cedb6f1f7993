"""Bad input to the command line: one line on stderr, exit code 2, before any work, and no file that held results
touched."""

import json

import pytest

from benchmarks import outcomes
from benchmarks.__main__ import main


def _exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("keep me")
    return path


@pytest.mark.parametrize("argv", [
    ["train", "--out", "{file}", "--data-dir", "{data}"],
    ["run", "--out", "{file}", "--data-dir", "{data}"],
    ["cifar10c", "--out", "{file}", "--data-dir", "{data}", "--n", "4"],
    ["compare", "--out", "{tmp}", "--report-dir", "{file}"],
    ["figures", "--out", "{tmp}", "--report-dir", "{file}", "--data-dir", "{data}"],
    ["evaluate", "--out", "{tmp}", "--cache-dir", "{file}", "--data-dir", "{data}", "--attacks", "natural"],
    ["evaluate", "--out", "{file}", "--data-dir", "{data}", "--attacks", "natural"],
])
def test_an_output_folder_that_is_a_file_is_refused_before_work(argv, a_file, tmp_path, data_dir, capsys):
    argv = [a.format(file=a_file, data=data_dir, tmp=tmp_path) for a in argv]
    err = _exit_2(argv, capsys)
    assert str(a_file) in err and "is a file" in err
    assert a_file.read_text() == "keep me"
    assert not (tmp_path / "runs").exists()


def test_an_unwritable_output_folder_is_refused_before_training(tmp_path, data_dir, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)  # root writes anywhere: simulate a read-only folder
    err = _exit_2(["train", "--out", str(tmp_path / "new"), "--data-dir", data_dir], capsys)
    assert "cannot write" in err and "Permission denied" in err


def test_cifar10c_more_images_than_the_test_set(tmp_path, data_dir, capsys):
    assert "10000" in _exit_2(["cifar10c", "--out", str(tmp_path), "--data-dir", data_dir, "--n", "20000"], capsys)


def test_figures_on_an_empty_folder_says_so(tmp_path, data_dir, capsys):
    assert "nothing to draw" in _exit_2(["figures", "--out", str(tmp_path), "--data-dir", data_dir], capsys)


def test_compare_on_an_empty_folder_writes_nothing(tmp_path, capsys):
    assert "no evaluations" in _exit_2(["compare", "--out", str(tmp_path)], capsys)
    assert not (tmp_path / "report").exists()


def _an_eval(folder):
    survived = outcomes.pack([True, False, True, True])
    stored = {"config": {"source": "ours", "label": "AT", "train_seed": 0, "dataset": "cifar10"},
              "results": {"natural": {"accuracy": 0.75, "correct": 3, "n": 4, "images": "x", "max_eps": 0.0,
                                      "label": "Natural", "survived": survived}}, "partial": {}}
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(stored))
    return stored


@pytest.mark.parametrize("content, why", [
    ("", "not a readable eval.json"),
    ('{"config": {"label": "AT"}, "res', "not a readable eval.json"),
    ("[1, 2]", "not a valid eval.json"),
    ('{"config": {}, "results": {"natural": {"accuracy": "high"}}}', "not a number"),
    ('{"config": {}, "results": {"natural": {"accuracy": 0.9, "correct": 3, "n": 4, "survived": {"n": 4, '
     '"bits": "DQ=="}}}}', "disagree"),
])
def test_a_corrupt_eval_json_is_one_line_naming_it(content, why, tmp_path, capsys):
    _an_eval(tmp_path / "runs" / "good")
    bad = tmp_path / "runs" / "bad" / "eval.json"
    bad.parent.mkdir()
    bad.write_text(content)
    err = _exit_2(["compare", "--out", str(tmp_path)], capsys)
    assert str(bad) in err and why in err
    assert bad.read_text() == content and not (tmp_path / "report").exists()


def test_a_corrupt_run_json_is_one_line_naming_it(tmp_path, capsys):
    _an_eval(tmp_path / "runs" / "good")
    (tmp_path / "runs" / "good" / "run.json").write_text("{half")
    assert "run.json" in _exit_2(["compare", "--out", str(tmp_path)], capsys)


def test_a_misspelt_flag_shows_the_subcommands_usage(capsys):
    err = capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--outt", "x"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "part-bench compare: error: unrecognized arguments: --outt x" in err and "--report-dir" in err


@pytest.mark.parametrize("command", ["compare", "figures"])
def test_help_describes_the_subcommand(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "eval" in capsys.readouterr().out.split("options:")[0].split("\n", 2)[-1]
