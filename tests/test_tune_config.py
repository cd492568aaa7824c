"""The `fsg tune` search format: every mistake is a ConfigError naming the file and the key, before Ray starts."""

from pathlib import Path

import pytest
import yaml
from ray.tune.experiment import Experiment

from fsg_ray.adapt.methods import METHODS
from fsg_ray.cli import main
from fsg_ray.config import ConfigError, load_config
from fsg_ray.ray.tune import record_or_check_search, tune_config, tune_space
from fsg_ray.search.config import load_search_config
from fsg_ray.eval.validation import reported_key

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "tune_configs").glob("*.yaml"))

VALID = {
    "name": "t",
    "base": {"source": "toy:faces", "target": "toy:sketch", "steps": 20},
    "metric": {"name": "kid", "mode": "min"},
    "search": {"cdc.weight": {"space": "loguniform", "lower": 100, "upper": 10000}, "anchors.every": {"space": "choice", "values": [2, 4]}},
    "scheduler": {"type": "asha", "grace_period": 5},
    "eval": {"every": 5, "n_generated": 16},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def changed(path: str, value) -> dict:
    """VALID with one nested key (dotted path; a '/' separates a search path from its keys) set to `value`."""
    data = yaml.safe_load(yaml.safe_dump(VALID))
    *parents, leaf = path.split("/")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_search_config_validates(config):
    search = load_search_config(config)
    assert search.search and search.trial_config({}).checkpoint_every == search.eval.every


def test_shipped_configs_include_the_three_searches_of_the_issue():
    assert {p.name for p in SHIPPED} >= {"toy_cdc.yaml", "methods_toy.yaml", "ffhq256_sketches.yaml"}


def test_methods_toy_searches_every_method_each_with_its_own_knob():
    search = load_search_config(next(p for p in SHIPPED if p.name == "methods_toy.yaml"))
    assert set(search.search["method"].values) == set(METHODS)
    assert {"cdc.weight", "baselines.ewc_weight", "adam.quantile", "rick.freeze_quantile"} <= set(search.search)


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("colour", 1, "colour"),
        ("metric/direction", "up", "metric.direction"),
        ("scheduler/patience", 3, "scheduler.patience"),
        ("trial/gpus", 1, "trial.gpus"),
        ("eval/samples", 10, "eval.samples"),
        ("base/cdc/wieght", 2.0, "base.cdc.wieght"),
        ("search/cdc.weight", {"space": "uniform", "lower": 1, "upper": 2, "step": 1}, "search.cdc.weight.step"),
    ],
)
def test_an_unknown_key_at_any_level_names_the_key_and_the_file(tmp_path, path, value, key):
    config = write(tmp_path, changed(path, value))
    with pytest.raises(ConfigError) as error:
        load_search_config(config)
    assert str(config) in str(error.value) and key in str(error.value)


def test_a_search_path_that_is_not_an_adapt_config_field_is_rejected(tmp_path):
    config = write(tmp_path, changed("search/anchors.radius", {"space": "uniform", "lower": 0.1, "upper": 0.2}))
    with pytest.raises(ConfigError, match=r"search\.anchors\.radius: not an AdaptConfig field; valid here: anchors\.count, anchors\.every") as error:
        load_search_config(config)
    assert str(config) in str(error.value)


def test_lower_not_below_upper_is_rejected(tmp_path):
    config = write(tmp_path, changed("search/cdc.weight", {"space": "uniform", "lower": 500, "upper": 500}))
    with pytest.raises(ConfigError, match=r"search\.cdc\.weight: lower \(500\) must be below upper \(500\)") as error:
        load_search_config(config)
    assert str(config) in str(error.value)


def test_a_non_positive_loguniform_bound_is_rejected(tmp_path):
    config = write(tmp_path, changed("search/cdc.weight", {"space": "loguniform", "lower": 0, "upper": 10}))
    with pytest.raises(ConfigError, match=r"search\.cdc\.weight\.lower: loguniform bounds must be positive") as error:
        load_search_config(config)
    assert str(config) in str(error.value)


def test_optuna_with_grid_search_is_rejected(tmp_path):
    data = changed("searcher/type", "optuna")
    data["search"]["anchors.every"] = {"space": "grid_search", "values": [2, 4]}
    config = write(tmp_path, data)
    with pytest.raises(ConfigError, match=r"search\.anchors\.every: grid_search cannot be used with searcher\.type optuna") as error:
        load_search_config(config)
    assert str(config) in str(error.value)


def test_a_value_of_the_wrong_type_for_its_field_is_rejected(tmp_path):
    config = write(tmp_path, changed("search/anchors.count", {"space": "uniform", "lower": 2, "upper": 20}))
    with pytest.raises(ConfigError, match=r"search\.anchors\.count: the value 2\.0 does not fit \(anchors\.count: expected int"):
        load_search_config(config)


def test_a_field_set_in_base_and_searched_is_rejected(tmp_path):
    config = write(tmp_path, changed("base/cdc", {"weight": 10.0}))
    with pytest.raises(ConfigError, match=r"search\.cdc\.weight: also set in base"):
        load_search_config(config)


def test_a_folder_target_needs_a_validation_set(tmp_path):
    config = write(tmp_path, changed("base/target", "shots/"))
    with pytest.raises(ConfigError, match=r"eval\.validation: required when base\.target \(shots/\) is not toy:NAME"):
        load_search_config(config)


def test_a_searched_metric_needs_its_evaluation(tmp_path):
    config = write(tmp_path, changed("metric/name", "corr_l1"))
    with pytest.raises(ConfigError, match=r"metric\.name: corr_l1 needs 'corr' in eval\.metrics"):
        load_search_config(config)


def test_a_closed_world_target_is_searched_on_its_gap_closed(tmp_path):
    data = changed("base/target", "closed:sketch")
    data["metric"] = {"name": "gap_corr_stlpips", "mode": "max"}
    data["eval"]["metrics"] = ["corr", "gap"]
    search = load_search_config(write(tmp_path, data))
    assert search.validation == "closed:sketch" and search.eval.metrics == ("corr", "gap")


def test_gap_needs_its_distance_and_the_gap_in_eval_metrics(tmp_path):
    data = changed("base/target", "closed:sketch")
    data["metric"] = {"name": "gap_kid", "mode": "max"}
    with pytest.raises(ConfigError, match=r"metric\.name: gap_kid needs 'gap' in eval\.metrics \(kid\)"):
        load_search_config(write(tmp_path, data))


def test_gap_on_a_data_defined_target_is_refused_naming_it(tmp_path):
    config = write(tmp_path, changed("eval/metrics", ["kid", "gap"]))
    with pytest.raises(ConfigError, match=r"eval\.metrics: gap is not defined here: target toy:sketch is data-defined"):
        load_search_config(config)


def test_a_closed_world_target_of_another_source_is_refused(tmp_path):
    config = write(tmp_path, changed("base/target", "closed:sketch@other.pt"))
    with pytest.raises(ConfigError, match=r"eval\.validation: closed:sketch@other\.pt is made from other\.pt, base\.source is toy:faces"):
        load_search_config(config)


def test_fid_from_fewer_samples_than_feature_dimensions_is_rejected(tmp_path):
    config = write(tmp_path, changed("eval/metrics", ["fid", "kid"]))
    with pytest.raises(ConfigError, match=r"eval\.metrics: fid with eval\.n_generated=\d+: FID needs more than 2048 samples"):
        load_search_config(config)


def test_an_unknown_feature_extractor_is_rejected(tmp_path):
    config = write(tmp_path, changed("eval/features", "vgg"))
    with pytest.raises(ConfigError, match=r"eval\.features: expected one of inception, offline, got 'vgg'"):
        load_search_config(config)


def test_offline_features_report_kid_under_its_own_name():
    assert (reported_key("kid", "offline"), reported_key("kid", "inception"), reported_key("corr_l1", "offline")) == ("kid_offline", "kid", "corr_l1")


def test_cli_reports_a_search_file_error_before_starting_ray(tmp_path, capsys):
    config = write(tmp_path, changed("search/cdc.weight", {"space": "loguniform", "lower": -1, "upper": 10}))
    assert main(["tune", str(config), "--out", str(tmp_path / "run")]) == 2
    assert f"fsg tune: error: {config}: search.cdc.weight.lower" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_overrides_apply_to_the_files_keys(tmp_path):
    search = load_search_config(write(tmp_path, VALID), ["base.steps=40", "num_samples=3"])
    assert (search.base.steps, search.num_samples, search.scheduler.max_t) == (40, 3, 40)


def test_a_trial_config_is_the_base_with_the_sampled_values(tmp_path):
    search = load_search_config(write(tmp_path, VALID))
    config = search.trial_config({"cdc.weight": 250.0, "anchors.every": 2})
    assert (config.steps, config.cdc.weight, config.anchors.every, config.checkpoint_every) == (20, 250.0, 2, 5)


def test_a_rerun_with_a_changed_search_refuses_naming_the_key(tmp_path):
    run = str(tmp_path / "run")
    record_or_check_search(load_search_config(write(tmp_path, VALID)), run)
    record_or_check_search(load_search_config(write(tmp_path, VALID)), run)
    changed_search = load_search_config(write(tmp_path, changed("search/cdc.weight", {"space": "loguniform", "lower": 100, "upper": 5000})))
    with pytest.raises(ConfigError, match=r"search\.cdc\.weight\.upper was 10000, now 5000"):
        record_or_check_search(changed_search, run)


def test_best_yaml_format_is_what_fsg_adapt_reads(tmp_path):
    """best.yaml is config_to_dict of a trial config: load_config reads it back unchanged."""
    from fsg_ray.config import config_to_dict

    config = load_search_config(write(tmp_path, VALID)).trial_config({"cdc.weight": 250.0, "anchors.every": 2})
    (tmp_path / "best.yaml").write_text("# comment\n" + yaml.safe_dump(config_to_dict(config)))
    assert load_config(tmp_path / "best.yaml") == config


def test_an_optuna_search_samples_with_optunas_tpe_on_the_searched_metric(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    from fsg_ray.ray.tune import tune_config

    search = load_search_config(write(tmp_path, changed("searcher/type", "optuna")))
    built = tune_config(search, "kid_offline")
    assert isinstance(built.search_alg, OptunaSearch)
    assert (built.metric, built.mode, built.num_samples) == ("kid_offline", "min", 1)


def sampled_configs(search) -> list[dict]:
    """The configurations the search's searcher hands out first (as many as may run at once)."""
    searcher = tune_config(search, "kid_offline").search_alg
    space = {path: tune_space(space) for path, space in search.search.items()}
    searcher.add_configurations([Experiment("sampled", lambda config: None, config=space, num_samples=search.num_samples)])
    configs = []
    while (trial := searcher.next_trial()) is not None:
        configs.append(trial.config)
    return configs


def test_the_random_searcher_draws_from_base_seed_so_a_search_without_asha_samples_the_same_configs():
    shipped = SHIPPED[0].parent / "toy_cdc.yaml"
    with_asha, without = load_search_config(shipped, ["scheduler.type=asha"]), load_search_config(shipped, ["scheduler.type=none"])
    first = sampled_configs(with_asha)
    assert len(first) == with_asha.max_concurrent_trials
    assert sampled_configs(without) == first
    assert sampled_configs(load_search_config(shipped, ["base.seed=1"])) != first


@pytest.mark.parametrize(
    ("key", "values", "picked"),
    [("noise.strength", ["learned", "frozen", "penalised"], "penalised"), ("anchors.off_anchor_d", ["patch", "image"], "image")],
)
def test_a_named_setting_can_be_searched_as_a_choice(tmp_path, key, values, picked):
    search = load_search_config(write(tmp_path, changed(f"search/{key}", {"space": "choice", "values": values})))
    assert search.search[key].values == tuple(values)
    config = search.trial_config({"cdc.weight": 250.0, "anchors.every": 2, key: picked})
    section, field = key.split(".")
    assert getattr(getattr(config, section), field) == picked


@pytest.mark.parametrize(
    ("key", "values", "message"),
    [
        ("noise.strength", ["learned", "muted"], r"search\.noise\.strength: the value 'muted' does not fit \(noise\.strength: expected one of"),
        ("anchors.off_anchor_d", ["patch", "pixel"], r"search\.anchors\.off_anchor_d: the value 'pixel' does not fit \(anchors\.off_anchor_d: expected patch or image"),
    ],
)
def test_an_unknown_named_setting_in_a_search_is_rejected_naming_the_key(tmp_path, key, values, message):
    config = write(tmp_path, changed(f"search/{key}", {"space": "choice", "values": values}))
    with pytest.raises(ConfigError, match=message):
        load_search_config(config)


def test_an_unknown_method_in_base_or_in_the_search_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"base\.method: unknown 'nosuch'; available: ada, adam, bsa, cdc"):
        load_search_config(write(tmp_path, changed("base/method", "nosuch")))
    with pytest.raises(ConfigError, match=r"search\.method: the value 'nosuch' does not fit \(method: unknown 'nosuch'; available: ada, adam, bsa"):
        load_search_config(write(tmp_path, changed("search/method", {"space": "choice", "values": ["cdc", "nosuch"]})))


def test_cli_refuses_a_search_whose_base_target_is_missing_before_starting_ray(tmp_path, capsys, monkeypatch):
    from fsg_ray.ray import tune

    monkeypatch.setattr(tune, "connect", lambda **_: pytest.fail("Ray was started"))
    data = changed("base/target", str(tmp_path / "MISSING"))
    data["eval"]["validation"] = "toy:sketch"
    assert main(["tune", str(write(tmp_path, data)), "--out", str(tmp_path / "run")]) == 2
    assert "MISSING" in capsys.readouterr().err


def test_sha_hands_out_every_trial_at_once_in_the_order_asha_samples_them():
    """sha admits trials itself, so its searcher has no limit; the seeded draws are the same configurations."""
    shipped = SHIPPED[0].parent / "toy_cdc.yaml"
    asha, sha = load_search_config(shipped, ["scheduler.type=asha"]), load_search_config(shipped, ["scheduler.type=sha"])
    everything = sampled_configs(sha)
    assert len(everything) == sha.num_trials == sha.num_samples
    assert everything[: asha.max_concurrent_trials] == sampled_configs(asha)


def test_sha_counts_every_grid_combination_as_a_trial(tmp_path):
    data = changed("search/anchors.every", {"space": "grid_search", "values": [2, 4, 8]})
    data["num_samples"] = 5
    assert load_search_config(write(tmp_path, data)).num_trials == 15


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        ({"type": "sha", "grace_period": 5, "reduction_factor": 2.5}, "scheduler.reduction_factor: sha keeps 1/factor"),
        ({"type": "sha", "grace_period": 5, "reduction_factor": 3}, "scheduler.grace_period: sha judges .* 5 is not a multiple of eval.every (10)"),
        ({"type": "hyperband"}, "scheduler.type: expected one of asha, sha, none, got 'hyperband'"),
    ],
)
def test_a_sha_schedule_that_cannot_be_run_is_refused_naming_the_key(tmp_path, scheduler, message):
    data = changed("scheduler", scheduler)
    data["eval"]["every"] = 10 if scheduler.get("reduction_factor") == 3 else 5
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_search_config(write(tmp_path, data))


def test_sha_with_optuna_is_refused():
    shipped = SHIPPED[0].parent / "toy_cdc.yaml"
    with pytest.raises(ConfigError, match="searcher.type: sha draws every trial's configuration"):
        load_search_config(shipped, ["scheduler.type=sha", "searcher.type=optuna"])
