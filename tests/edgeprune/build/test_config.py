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
    ('autocast = "half"\n', "--autocast must be one of auto, off, bf16, fp16, got 'half'"),
    ('autocast = "fp16"\n', "--autocast fp16 needs --accelerator cuda"),
    ('[build]\nautocast = "fp16"\naccelerator = "cpu"\n', "--autocast fp16 needs --accelerator cuda"),
])
def test_configs_validate_themselves(tmp_path, text, message):
    with pytest.raises(EdgepruneError, match=message):
        BuildConfig.from_toml(_write(tmp_path / "bad.toml", text))


def test_bad_flag_value_is_one_line_and_exit_2(tmp_path):
    r = runner.invoke(app, ["build", "--strategy", "gready", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "unknown strategies" in r.stderr
    assert not (tmp_path / "x").exists()


def test_autocast_is_a_setting_with_one_default_and_fp16_on_a_cpu_is_one_line(tmp_path):
    assert BuildConfig().autocast == "auto" and FLAGS["autocast"] == "autocast"
    assert 'autocast = "bf16"' in _dry_run("--autocast", "bf16")
    assert 'autocast = "fp16"' in _dry_run("--accelerator", "cuda", "--autocast", "fp16")   # no device probed
    assert BuildConfig.from_toml(_write(tmp_path / "c.toml", 'autocast = "off"\n')).autocast == "off"
    r = runner.invoke(app, ["build", "--autocast", "fp16", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.output, r.output
    assert "--autocast fp16 needs --accelerator cuda" in r.stderr
    assert not (tmp_path / "x").exists()


def _write(path, text):
    path.write_text(text)
    return path


# ---------------------------------------------------------------- values read from files are checked by type

@pytest.mark.parametrize("text, key", [
    ('[model]\ntrust_checkpoint = "false"\n', "model.trust_checkpoint"),
    ('[build]\ntrust_checkpoint = "false"\n', "build.trust_checkpoint"),
    ('[model]\ntrust_checkpoint = 0\n', "model.trust_checkpoint"),
    ('[model]\nnum_classes = "10"\n', "model.num_classes"),
    ('[model]\ninput_size = 0\n', "model.input_size"),
    ('[model]\nname = 3\n', "model.name"),
    ('[search]\nbudget = 30\n', "search.budget"),
    ('[search]\nshortlist = "4"\n', "search.shortlist"),
    ('[search]\nshortlist = true\n', "search.shortlist"),
    ('[search]\nproxies = 3\n', "search.proxies"),
    ('[search]\nstrategies = ["knapsack", 1]\n', "search.strategies"),
    ('[search]\nscore_images = 0.5\n', "search.score_images"),
    ('[search]\nmax_accuracy_drop = "5"\n', "search.max_accuracy_drop"),
    ('[search]\nreplace_projection = "no"\n', "search.replace_projection"),
    ('[data]\nmean = [0.5, "x"]\n', "data.mean"),
    ('[data]\nchannels = 1.5\n', "data.channels"),
    ('[finetune]\nlr = -1\n', "finetune.lr"),
    ('[finetune]\nepochs = -1\n', "finetune.epochs"),
    ('[finetune]\nkd = 1\n', "finetune.kd"),
    ('[finetune]\nalpha = 2.0\n', "finetune.alpha"),
    ('[finetune]\nlr = nan\n', "finetune.lr"),
    ('[measure]\nbench_runs = 0\n', "measure.bench_runs"),
    ('[measure]\nverify_arm = "true"\n', "measure.verify_arm"),
    ('[measure]\nssh = 22\n', "measure.ssh"),
    ('out = 3\n', "out"),
    ('accelerator = true\n', "accelerator"),
    ('autocast = 16\n', "autocast"),
    ('seed = "0"\n', "seed"),
    ('seed = -1\n', "seed"),
    ('[build]\nbudget = 30\n', "build.budget"),
    ('[build]\nshortlist = "4"\n', "build.shortlist"),
    ('[build]\nfinetune_lr = -1\n', "build.finetune_lr"),
    ('[model]\ntrust_code = true\n', "model.trust_code"),
    ('[build]\ntrust_code = true\n', "build.trust_code"),
])
def test_wrong_types_and_ranges_in_files_are_one_line_naming_key_and_file(tmp_path, text, key):
    f = _write(tmp_path / "bad.toml", text)
    r = runner.invoke(app, ["build", "--config", str(f), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert key in r.stderr and str(f) in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_right_types_in_files_still_read(tmp_path):
    f = _write(tmp_path / "ok.toml", '[data]\nmean = "imagenet"\nstd = "0.5,0.5,0.5"\n[finetune]\nepochs = 2\n'
                                     'lr = 1\n[search]\nmax_accuracy_drop = 3\n[measure]\nssh_config = "cfg"\n')
    cfg = BuildConfig.from_toml(f)
    assert (cfg.data.mean, cfg.data.std, cfg.finetune.epochs, cfg.finetune.lr) == ("imagenet", (0.5,) * 3, 2, 1)


def test_string_false_trust_checkpoint_unpickles_nothing(tmp_path):
    import torch

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    f = _write(tmp_path / "c.toml", f'[model]\nname = "cifar_resnet20"\nweights = "{tmp_path / "evil.pt"}"\n'
                                    'trust_checkpoint = "false"\n')
    r = runner.invoke(app, ["build", "--config", str(f), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "model.trust_checkpoint" in r.stderr, r.output
    assert not (tmp_path / "ran").exists()


def test_factory_from_a_config_file_needs_trust_code(tmp_path, monkeypatch):
    import sys

    (tmp_path / "cfg_marker_nets.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n"
                                                 "def tiny(**kw):\n    raise SystemExit(9)\n")
    monkeypatch.chdir(tmp_path)
    for text in ('[model]\nname = "cfg_marker_nets:tiny"\n', '[build]\nmodel = "cfg_marker_nets:tiny"\n'):
        f = _write(tmp_path / "c.toml", text)
        assert not BuildConfig.from_toml(f).model.trust_code
        r = runner.invoke(app, ["build", "--config", str(f), "--out", str(tmp_path / "out")])
        errors = [line for line in r.stderr.splitlines() if not line.startswith("[")]   # not progress lines
        assert r.exit_code == 2 and len(errors) == 1 and "Traceback" not in r.output, r.output
        assert "--trust-code" in r.stderr and "cfg_marker_nets:tiny" in r.stderr, r.stderr
        assert not (tmp_path / "ran").exists()
        assert BuildConfig.from_toml(f, {"trust_code": True}).model.trust_code
        assert "trust_code" not in BuildConfig.from_toml(f, {"trust_code": True}).to_toml()
    # typed on the command line: consent by itself (over a file, or without one)
    assert BuildConfig.from_toml(f, {"model": "cfg_marker_nets:tiny"}).model.trust_code
    assert BuildConfig.from_flags({"model": "cfg_marker_nets:tiny"}).model.trust_code
    assert not BuildConfig.from_flags({"model": "rec.json"}).model.trust_code
    sys.modules.pop("cfg_marker_nets", None)


@pytest.mark.parametrize("flag, value, message", [
    ("--finetune-lr", "-1", "--finetune-lr must be above 0"),
    ("--finetune-epochs", "-1", "--finetune-epochs must be at least 0"),
    ("--alpha", "2", "--alpha must be between 0 and 1"),
    ("--budget", "30", "has no unit"),
    ("--budget", "1e400ms", "finite"),
    ("--search-minutes", "0", "--search-minutes must be above 0"),
    ("--search-minutes", "nan", "--search-minutes must be above 0"),
])
def test_flags_are_range_checked_like_files(tmp_path, flag, value, message):
    r = runner.invoke(app, ["build", flag, value, "--out", str(tmp_path / "x"), "--dry-run"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.output


def test_the_joint_searches_are_strategies_and_the_table_search_is_the_default():
    assert BuildConfig().search.strategies == ["latency-greedy", "accuracy-greedy", "knapsack", "table"]
    assert BuildConfig.from_flags({"strategies": ["joint-greedy"]}).search.strategies == ["joint-greedy"]
    with pytest.raises(EdgepruneError, match="unknown strategies"):
        BuildConfig.from_flags({"strategies": ["tabel"]})


def test_lever_settings_are_validated():
    assert BuildConfig.from_flags({"levers": ["channels,blocks"]}).search.levers == ["blocks", "channels"]
    with pytest.raises(EdgepruneError, match="unknown lever depth; known: blocks, channels, resolution"):
        BuildConfig.from_flags({"levers": ["depth"]})
    with pytest.raises(EdgepruneError, match="--channel-multiple must be a multiple of 4"):
        BuildConfig.from_flags({"channel_multiple": 6})
    with pytest.raises(EdgepruneError, match="--channel-criterion must be one of magnitude, bn-scale"):
        BuildConfig.from_flags({"channel_criterion": "taylor"})
    with pytest.raises(EdgepruneError, match="--min-resolution must be at least 1"):
        BuildConfig.from_flags({"min_resolution": 0})
