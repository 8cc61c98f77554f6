"""`--config job.toml`, `--print-config`, `--help` and `--version`: the settings come from the
config dataclasses alone, flags override the file, and bad files are exit 2 naming the problem."""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib

import pytest

from fashion_batch import __version__
from fashion_batch.cli import COMMANDS, build_parser, main
from fashion_batch.config_file import dumps, load
from fashion_batch.embed.config import EmbedConfig
from fashion_batch.options import cli_fields


def _print_config(capsys, *argv) -> str:
    assert main([*argv, "--print-config"]) == 0
    return capsys.readouterr().out


def test_print_config_round_trips_through_config(tmp_path, capsys):
    out = tmp_path / "out"
    printed = _print_config(
        capsys, "embed", "--input", "in/", "--output", str(out), "--normalize", "--batch-size", "8"
    )
    settings = tomllib.loads(printed)
    assert settings["normalize"] is True and settings["batch_size"] == 8
    assert settings["text_template"] == "{title}. {description}"
    assert "num_actors" not in settings  # unset options are commented out, not invented
    job = tmp_path / "job.toml"
    job.write_text(printed)
    assert _print_config(capsys, "embed", "--config", str(job)) == printed
    assert not out.exists()  # --print-config runs nothing


def test_flags_override_the_file_and_the_flag_spellings_are_accepted(tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text(
        'input = "in/"\noutput = "out/"\nbatch-size = 32\nrows_per_part = 100\n'
        'gpus_per_actor = 1\nprecision = "fp32"\n'
    )
    settings = tomllib.loads(
        _print_config(capsys, "embed", "--config", str(job), "--batch-size", "8")
    )
    assert settings["batch_size"] == 8  # the flag wins
    assert settings["rows_per_unit"] == 100  # --rows-per-part's spelling
    assert settings["gpus_per_actor"] == 1.0 and settings["precision"] == "fp32"


def test_train_takes_a_config_file_too(tmp_path, capsys):
    job = tmp_path / "train.toml"
    job.write_text(f'triplets = "t.parquet"\noutput = "{tmp_path / "m"}"\nepochs = 3\nlr = 1e-4\n')
    settings = tomllib.loads(_print_config(capsys, "train", "--config", str(job), "--epochs", "1"))
    assert (settings["epochs"], settings["lr"], settings["batch_size"]) == (1, 1e-4, 16)
    assert settings["output"] == str(tmp_path / "m")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("batchsize = 3", r"job\.toml: unknown key 'batchsize' .*did you mean 'batch_size'"),
        ('batch_size = "64"', r"job\.toml: batch_size = '64' must be an integer"),
        ("batch_size = true", r"job\.toml: batch_size = True must be an integer"),
        ("normalize = 1", r"job\.toml: normalize = 1 must be true or false"),
        ('precision = "fp8"', r"job\.toml: precision = 'fp8' must be one of auto\|fp32"),
        ("[embed]\nbatch_size = 3", r"job\.toml: unknown key 'embed'"),
        ('input = "a', r"job\.toml: not valid TOML"),
        ("batch_size = 0", r"--batch-size must be > 0, got 0"),
    ],
)
def test_a_bad_config_file_is_exit_2_naming_key_value_and_file(tmp_path, capsys, content, message):
    job = tmp_path / "job.toml"
    job.write_text(f'output = "{tmp_path / "out"}"\n{content}\n')
    assert main(["embed", "--input", "in/", "--config", str(job)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_a_missing_file_or_setting_is_exit_2(tmp_path, capsys):
    assert main(["embed", "--config", str(tmp_path / "nope.toml")]) == 2
    assert f"--config {tmp_path / 'nope.toml'}: no such file" in capsys.readouterr().err
    assert main(["embed", "--output", str(tmp_path / "out")]) == 2
    assert "missing required setting(s): input (--input)" in capsys.readouterr().err
    assert main(["sample-data", "--output", str(tmp_path), "--listings", "3"]) == 2
    assert "listings must be at least 50" in capsys.readouterr().err


def test_dumps_then_load_gives_the_same_config(tmp_path):
    config = EmbedConfig(
        input="s3://b/in/",
        output="o",
        text_template='{title} "quoted" \\ ünï\n\t{description}',
        gpus_per_actor=0.5,
        limit=7,
    )
    job = tmp_path / "job.toml"
    job.write_text(dumps(config), encoding="utf-8")
    values = load(EmbedConfig, job)
    assert EmbedConfig(**values) == config
    set_options = {
        f.name for f, _, _ in cli_fields(EmbedConfig) if getattr(config, f.name) is not None
    }
    assert set(values) == set_options


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"fashion-batch {__version__}\n"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_has_help_its_default_and_its_choices():
    parser = build_parser()
    assert all(a.help for a in parser._actions if a.option_strings)
    for command in COMMANDS:
        sub = _subparsers(parser)[command.name]
        actions = {a.dest: a for a in sub._actions}
        for field, meta, _ in cli_fields(command.config):
            if meta["hidden"]:
                continue
            action = actions[field.name]
            assert action.help and action.help != argparse.SUPPRESS, field.name
            default = field.default
            if default is dataclasses.MISSING:
                assert meta["positional"] or "required" in action.help, field.name
            elif default is not None and default is not False:
                assert f"(default: {default})" in action.help, field.name
            assert action.choices == meta["choices"], field.name
        help_text = sub.format_help()
        assert "--config FILE" in help_text and "--print-config" in help_text
