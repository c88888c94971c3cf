import pytest

from fedseg.errors import ConfigError
from fedseg.site_config import ENV_DIR, find_site_config, load_site_config

GOOD = """
site: site-7
device: cpu
num_threads: 1
cache_rate: 0.5
num_workers: 2
datasets:
  spleen:
    data_root: data/spleen
    datalist: data/spleen/splits/site-7.json
"""


def _write(tmp_path, text, name="site-7.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_config_loads_into_typed_object(tmp_path):
    cfg = load_site_config(_write(tmp_path, GOOD))
    assert cfg.site == "site-7" and cfg.cache_rate == 0.5 and cfg.num_workers == 2
    # Relative paths resolve against the YAML's folder, not the working directory.
    assert cfg.task_data("spleen").data_root == (tmp_path / "data" / "spleen").resolve()


def test_every_problem_is_reported_with_site_key_and_allowed_values(tmp_path):
    bad = GOOD.replace("cache_rate: 0.5", "cache_rate: lots").replace("device: cpu", "device: tpu")
    bad += "colour: blue\n"
    with pytest.raises(ConfigError) as err:
        load_site_config(_write(tmp_path, bad))
    msg = str(err.value)
    assert "site 'site-7'" in msg and "3 problem(s)" in msg
    assert "'cache_rate' must be a number from 0 to 1, got 'lots'" in msg
    assert "'device' must be one of auto, cpu, cuda, cuda:N, got 'tpu'" in msg
    assert "unknown key 'colour'; allowed keys: site, device" in msg


def test_missing_required_keys_and_dataset_paths(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'site'") as err:
        load_site_config(_write(tmp_path, "datasets:\n  spleen:\n    data_root: x\n"))
    assert "datasets.spleen: missing required key 'datalist' (a path relative to this file)" in str(err.value)


def test_nested_keys_and_strict_types_are_checked(tmp_path):
    bad = GOOD.replace("num_workers: 2", "num_workers: true") + "ray:\n  workers: 0\n  bogus: 1\n"
    bad = bad.replace("datasets:\n", "datasets:\n  liver: 3\n")
    with pytest.raises(ConfigError) as err:
        load_site_config(_write(tmp_path, bad))
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "'num_workers' must be a whole number from 0 to 64, got True" in msg  # a bool is not a count
    assert "ray: 'workers' must be a whole number >= 1, got 0" in msg
    assert "ray: unknown key 'bogus'; allowed keys: workers, gpus_per_worker, address, round_timeout_s" in msg
    assert "datasets.liver: must be a mapping with data_root and datalist, got 3" in msg


def test_task_not_configured_names_what_the_site_has(tmp_path):
    cfg = load_site_config(_write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match="no dataset for task 'liver'.*it has: spleen"):
        cfg.task_data("liver")


def test_yaml_cannot_construct_python_objects(tmp_path):
    evil = GOOD + "extra: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_site_config(_write(tmp_path, evil))


def test_lookup_order_env_then_startup_kit_then_repository(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    _write(env_dir, GOOD)
    monkeypatch.setenv(ENV_DIR, str(env_dir))
    assert find_site_config("site-7") == env_dir / "site-7.yaml"
    with pytest.raises(ConfigError, match="does not exist"):
        find_site_config("site-8")  # with the variable set, nowhere else is searched

    monkeypatch.delenv(ENV_DIR)
    kit = tmp_path / "kit"
    (kit / "local").mkdir(parents=True)
    _write(kit / "local", GOOD, "fedseg_site.yaml")
    assert find_site_config("site-7", workspace=kit) == kit / "local" / "fedseg_site.yaml"
    # From this checkout the committed demo configs are the fallback.
    assert find_site_config("site-1", workspace=tmp_path).name == "site-1.yaml"
    with pytest.raises(ConfigError, match="looked at"):
        find_site_config("site-99", workspace=tmp_path)


def test_committed_site_configs_are_valid():
    from conftest import REPO

    for k in (1, 2, 3):
        cfg = load_site_config(REPO / "site_configs" / f"site-{k}.yaml")
        assert cfg.site == f"site-{k}"
        assert cfg.task_data("spleen").datalist == (REPO / "data" / "spleen" / "splits" / f"site-{k}.json")
