"""Where the budget is measured, the search reads its predictions at the original's measured/predicted ratio:
a host profile that over-predicts this machine fourfold (fitted on a slower one) still plans for the figures
measured here, where without the anchor the same budget looks unreachable or costs blocks it did not need to."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from builds import brightness_npz, factories_importable  # tests/builds.py

from edgeprune.cli import app
from edgeprune.devices.profiles import bundled_profile_path, load_profile, save_profile

runner = CliRunner()
SLOWER = 4.0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("anchor")
    brightness_npz(tmp / "tiny.npz", 400, 200)
    factories_importable()
    host = load_profile(str(bundled_profile_path("host")))
    lm = host.latency_model
    slow = replace(host, latency_model=replace(lm, runtime_factor=lm.runtime_factor * SLOWER))
    save_profile(slow, tmp / "slow-host.toml", "the bundled host profile, every constant x4: a slower machine's fit")
    args = ["--model", "tinynets:tiny_resnet", "--input-size", "32", "--data", str(tmp / "tiny.npz"),
            "--device", str(tmp / "slow-host.toml"), "--score-images", "100", "--finetune-epochs", "0.1",
            "--bench-runs", "30", "--levers", "blocks", "--shortlist", "2"]
    r = runner.invoke(app, ["build", *args, "--budget", "0.0001ms", "--out", str(tmp / "u"), "--json"])
    assert r.exit_code == 3, r.output
    return tmp, args, json.loads(r.stdout)


def test_the_search_reads_the_original_at_its_measured_figure(env):
    _, _, out = env
    a = out["anchor"]
    assert a["source"] == "measured:host" and a["scale"] == pytest.approx(a["measured_ms"] / a["predicted_ms"])
    assert a["scale"] < 0.6            # the profile over-predicts fourfold
    assert out["search"]["base"]["latency_ms"] == pytest.approx(a["measured_ms"])
    assert out["best_reachable_ms"] < a["measured_ms"]


def test_an_anchored_build_plans_for_the_measured_figures_the_unanchored_one_overshoots(env):
    tmp, args, out = env
    budget = f"{(out['search']['base']['latency_ms'] + out['best_reachable_ms']) / 2:.4f}ms"
    r = runner.invoke(app, ["build", *args, "--budget", budget, "--out", str(tmp / "a"), "--json"])
    assert r.exit_code == 0, r.output
    built = json.loads(r.stdout)
    assert built["removed"] and built["latency"]["within_budget"]
    ratios = [a["planned_ms"] / a["final_ms"] for a in built["attempts"]]
    assert all(0.5 < x < 2.0 for x in ratios), ratios     # planned in the measured figures' terms, not 4x them
    r = runner.invoke(app, ["build", *args, "--no-anchor", "--budget", budget, "--out", str(tmp / "n"), "--json"])
    plain = json.loads(r.stdout)
    assert "anchor" not in plain
    if r.exit_code == 3:               # the fourfold figures put the budget out of reach
        assert "unreachable" in plain["message"]
    else:                              # or it removes what the budget did not ask for
        assert r.exit_code == 0, r.output
        assert min(a["planned_ms"] / a["final_ms"] for a in plain["attempts"]) > 2.0
        assert len(plain["removed"]) > len(built["removed"])
