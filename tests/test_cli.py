"""The ``cropstar`` command line: help, version, ``simulate`` and ``budget`` end to end."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cropstar import __version__
from cropstar.cli import app

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
TINY = ["--layers", "2", "--steps", "3", "--runs", "2", "--hidden-size", "4"]


def _flat(text: str) -> str:
    """Help text without Rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_commands_registered() -> None:
    assert {"simulate", "budget"} <= set(COMMANDS)


def test_app_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    flat = _flat(result.output)
    for command in COMMANDS:
        assert command in flat
    assert "--version" in flat


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in result.output
    assert "simulate" in result.output


def _leaf_commands() -> list[list[str]]:
    """Every command path, sub-commands of groups (import, dataset, models) included."""
    paths = []
    for name, command in sorted(typer.main.get_command(app).commands.items()):  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        paths += [[name, sub] for sub in sorted(subcommands)] if subcommands else [[name]]
    return paths


@pytest.mark.parametrize("command", _leaf_commands(), ids=" ".join)
def test_every_command_help_exits_zero_and_says_what_it_reads_and_writes(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    flat = _flat(result.output)
    assert "Usage" in flat
    assert re.search(r"\bWrites\b|\bwrites\b", flat), flat
    assert re.search(r"\bReads\b|\breads\b", flat), flat


def test_simulate_help_names_its_files() -> None:
    flat = _flat(runner.invoke(app, ["simulate", "--help"]).output)
    for name in ("heatmap_", "arrays/", "simulation_", "summary.csv", "jacobian.", "config.json"):
        assert name in flat, name


def test_budget_help_names_its_files() -> None:
    flat = _flat(runner.invoke(app, ["budget", "--help"]).output)
    assert "budget.csv" in flat and "budget.json" in flat


def test_simulate_help_shows_the_defaults() -> None:
    flat = _flat(runner.invoke(app, ["simulate", "--help"]).output)
    assert re.search(r"default:? 12\b", flat)
    assert re.search(r"default:? 200\b", flat)


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cropstar {__version__}"


# ---- simulate ----------------------------------------------------------------------------------
def test_simulate_tiny(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    result = runner.invoke(app, ["simulate", *TINY, "--cells", "star,vrnn", "--out", str(out)])
    assert result.exit_code == 0, result.output
    png = out / "heatmap_params_final.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    config = json.loads((out / "config.json").read_text())
    assert (config["layers"], config["steps"], config["runs"], config["hidden_size"]) == (2, 3, 2, 4)
    assert config["cells"] == ["star", "vrnn"] and config["loss"] == ["final"]
    with (out / "summary.csv").open(newline="") as handle:
        assert [r["cell"] for r in csv.DictReader(handle)] == ["star", "vrnn"]
    assert "star" in result.stdout and "vrnn" in result.stdout  # the summary table
    assert "Jacobian" in result.stdout
    assert "wrote" in result.stdout
    assert "heatmap_params_final.png" in "".join(result.stdout.split())


def test_simulate_logs_its_progress_when_stderr_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(variable, raising=False)
    args = ["simulate", *TINY, "--cells", "star,vrnn", "--loss", "final,all", "--chunk-size", "1"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "sim")])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    stage = r"(all simulations|(star|vrnn) \((final|all)\))"
    for line in lines:  # (lines between the end ones come when the machine is slow)
        assert re.fullmatch(stage + r": \d/\d runs \(\d+%\), elapsed \w+, (ETA \w+|done)(, .+)?", line), line
    assert re.fullmatch(r"all simulations: 8/8 runs \(100%\), elapsed \w+, done, at vrnn \(all\)", lines[-1])
    assert "━" not in result.stderr  # no bar drawn into the pipe


def test_simulate_both_losses(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["simulate", *TINY, "--cells", "lstm", "--loss", "final,all", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "heatmap_hidden_std_all.png").is_file()
    assert (out / "arrays" / "lstm_all_params.csv").is_file()


def test_simulate_bad_cell_is_one_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", *TINY, "--cells", "star,bogus", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "bogus" in result.stderr
    assert "error" in result.stderr.lower()
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped exception
    assert not (tmp_path / "o").exists()


def test_simulate_bad_cell_error_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--cells", "bogus", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("option", [["--loss", "mean"], ["--layers", "0"], ["--alpha", "2"]])
def test_simulate_invalid_settings_exit_2(tmp_path: Path, option: list[str]) -> None:
    result = runner.invoke(app, ["simulate", *TINY, *option, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "invalid settings" in result.stderr
    assert option[0].lstrip("-") in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("option", [["--cells", ""], ["--loss", ""]])
def test_simulate_empty_lists_exit_2(tmp_path: Path, option: list[str]) -> None:
    result = runner.invoke(app, ["simulate", *TINY, *option, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2


def test_simulate_config_file_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text("cells: [star]\nlayers: 2\nsteps: 3\nruns: 2\nhidden_size: 4\nseed: 3\n")
    out = tmp_path / "sim"
    result = runner.invoke(app, ["simulate", "--config", str(config), "--steps", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "config.json").read_text())
    assert written["cells"] == ["star"] and written["seed"] == 3 and written["layers"] == 2
    assert written["steps"] == 5  # the option overrides the file
    header = (out / "arrays" / "star_final_params.csv").read_text().splitlines()
    assert len(header) == 2 and len(header[0].split(",")) == 5


def test_simulate_missing_config_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope.yaml" in result.stderr
    assert "Traceback" not in result.output


# ---- budget ------------------------------------------------------------------------------------
def test_budget_writes_csv_and_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["budget", "--depths", "1,2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with (tmp_path / "budget.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["cell"], r["num_layers"]) for r in rows] == [
        ("star", "1"), ("star", "2"), ("lstm", "1"), ("lstm", "2"), ("vrnn", "1"), ("vrnn", "2")
    ]
    star_1 = rows[0]
    assert int(star_1["parameters"]) == 18186
    assert int(star_1["hidden_size"]) == 128 and int(star_1["num_classes"]) == 10
    assert json.loads((tmp_path / "budget.json").read_text())[0]["parameters"] == 18186
    assert "18,186" in result.stdout


def test_budget_prints_without_out(tmp_path: Path) -> None:
    result = runner.invoke(app, ["budget", "--cells", "lstm", "--depths", "8"])
    assert result.exit_code == 0, result.output
    assert "988,938" in result.stdout


def test_budget_per_timestep_task(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["budget", "--cells", "star", "--depths", "1", "--seq-len", "2", "--task", "per_timestep",
              "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "budget.json").read_text())[0]
    assert row["task"] == "per_timestep"
    assert row["macs_per_sequence"] == 2 * row["macs_per_step"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--depths", "x"], "--depths"), (["--depths", "1,two"], "--depths"), (["--cells", "bogus"], "bogus"),
     (["--task", "per_pixel"], "task"), (["--depths", "0"], "num_layers")],
)
def test_budget_bad_options_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["budget", *args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "b" / "budget.csv").exists()


def test_progress_shows_the_speed_of_the_stages_given_a_unit() -> None:
    from rich.progress import Progress

    from cropstar.cli.common import RateColumn

    clock = [0.0]
    progress = Progress(get_time=lambda: clock[0])
    pixels = progress.add_task("classifying pixels", total=1000, rate_unit="px")
    reading = progress.add_task("reading the cube", total=10, rate_unit="")
    clock[0] = 1.0
    progress.update(pixels, completed=100)
    clock[0] = 3.0
    progress.update(pixels, completed=700)  # 600 pixels in 2 s
    progress.update(reading, completed=5)
    column = RateColumn()
    assert column.render(progress.tasks[pixels]).plain == "300 px/s"
    assert column.render(progress.tasks[reading]).plain == ""
