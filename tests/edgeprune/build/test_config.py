"""One source of configuration: every flag names a field, flags and --config resolve the same defaults."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from edgeprune.build.config import FLAGS, BuildConfig, default_of
from edgeprune.cli import app
from edgeprune.commands.build import NOT_SETTINGS, build_command
from edgeprune.errors import EdgepruneError

runner = CliRunner()
PARAMS = {n: p for n, p in inspect.signature(build_command).parameters.items() if n != "ctx"}


def test_every_flag_names_a_config_field_and_every_flag_field_is_a_flag():
    settings = set(PARAMS) - set(NOT_SETTINGS)
    assert settings == set(FLAGS)
    cfg = BuildConfig()
    for flag, path in FLAGS.items():
        obj = cfg
        *sections, name = path.split(".")
        for s in sections:
            obj = getattr(obj, s)
        assert name in {f.name for f in fields(obj)}, (flag, path)


def test_flag_defaults_are_the_dataclass_defaults():
    for flag in FLAGS:
        assert PARAMS[flag].default == default_of(flag), flag


def _dry_run(*args: str) -> str:
    r = runner.invoke(app, ["build", "--dry-run", *args])
    assert r.exit_code == 0, r.output
    return r.stdout


def test_build_and_build_config_resolve_the_same(tmp_path):
    plain = _dry_run()
    assert BuildConfig.from_toml(_write(tmp_path / "a.toml", plain)) == BuildConfig()
    assert _dry_run("--config", str(_write(tmp_path / "empty.toml", ""))) == plain
    assert _dry_run("--config", str(tmp_path / "a.toml")) == plain


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path):
    f = _write(tmp_path / "c.toml", '[search]\nbudget = "12ms"\nshortlist = 2\n[finetune]\nlr = 0.05\n')
    cfg = BuildConfig.from_toml(_write(tmp_path / "out.toml", _dry_run("--config", str(f), "--shortlist", "3",
                                                                        "--strategy", "knapsack")))
    assert (cfg.search.budget, cfg.search.shortlist, cfg.search.strategies, cfg.finetune.lr) == \
        ("12ms", 3, ["knapsack"], 0.05)


def test_flat_build_table_of_earlier_versions_is_read(tmp_path):
    f = _write(tmp_path / "old.toml", '[build]\nbudget = "15ms"\nfinetune_epochs = 0.5\nstrategies = ["knapsack"]\n'
                                      'mean = [0.5]\n')
    cfg = BuildConfig.from_toml(f)
    assert (cfg.search.budget_ms, cfg.finetune.epochs, cfg.search.strategies, cfg.data.mean) == \
        (15.0, 0.5, ["knapsack"], (0.5,))


@pytest.mark.parametrize("text, message", [
    ('[search]\nstrategies = ["gready"]\n', "unknown strategies"),
    ('[search]\nproxies = ["direct"]\n', "unknown proxies"),
    ('[search]\nmetric = "p99"\n', "--metric"),
    ('[search]\nbudget = "fast"\n', "budget"),
    ('[search]\nselect = "best"\n', "--select"),
    ('[data]\nresize = "stretch"\n', "--resize"),
    ('[finetune]\nseed = 3\n', "finetune.seed"),
    ('[serach]\nbudget = "3ms"\n', "unknown keys serach"),
    ('[build]\nbudgett = "3ms"\n', "unknown keys budgett"),
])
def test_configs_validate_themselves(tmp_path, text, message):
    with pytest.raises(EdgepruneError, match=message):
        BuildConfig.from_toml(_write(tmp_path / "bad.toml", text))


def test_bad_flag_value_is_one_line_and_exit_2(tmp_path):
    r = runner.invoke(app, ["build", "--strategy", "gready", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "unknown strategies" in r.stderr
    assert not (tmp_path / "x").exists()


def _write(path, text):
    path.write_text(text)
    return path
