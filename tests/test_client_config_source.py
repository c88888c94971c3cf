"""A site that trains on the installed checkout's YAML says so loudly: site, YAML path and case counts."""

import logging

import pytest

from fedseg.flare import client
from fedseg.site_config import ENV_DIR, repository_site_configs


def test_the_checkout_banner_names_site_yaml_and_cases(tmp_path):
    text = client.checkout_warning("site-2", tmp_path / "site_configs" / "site-2.yaml",
                                   {"training": 9, "validation": 3, "test": 3})
    lines = text.strip().splitlines()
    assert lines[0] == lines[-1] == "!" * 78  # a banner stands out of NVFlare's lines
    assert "fedseg site-2: training on the site config of the source checkout" in text
    assert str(tmp_path / "site_configs" / "site-2.yaml") in text
    assert "(9 training, 3 validation, 3 test case(s))" in text
    assert f"{ENV_DIR}=<folder holding site-2.yaml>" in text


def test_only_the_checkout_source_is_flagged(tmp_path, monkeypatch):
    repo = repository_site_configs()
    if repo is None:
        pytest.skip("fedseg is not installed from a source checkout here")
    monkeypatch.delenv(ENV_DIR, raising=False)
    assert client._config_source(repo / "site-1.yaml") == (f"the source checkout ({repo / 'site-1.yaml'})", True)
    assert client._config_source(tmp_path / "local" / "fedseg_site.yaml")[1] is False
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    assert client._config_source(tmp_path / "site-1.yaml") == (f"${ENV_DIR}", False)


def test_a_site_opening_a_checkout_yaml_warns_with_its_cases(spleen_site, monkeypatch, caplog):
    import fedseg.site_config

    monkeypatch.delenv(ENV_DIR, raising=False)
    # Pretend the fixture's folder is the checkout's site_configs/ (as for a plain nvflare simulator run).
    monkeypatch.setattr(fedseg.site_config, "repository_site_configs", lambda: spleen_site.parent)
    monkeypatch.setattr(client, "find_site_config", lambda site: spleen_site)
    args = client.parse_args(["--task", "spleen", "--variant", "tiny"])
    with caplog.at_level(logging.INFO, logger="fedseg"):
        client._open_site("site-1", args)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "!!!" in r.getMessage()]
    assert len(warnings) == 1 and str(spleen_site) in warnings[0]
    assert "(6 training, 2 validation, 2 test case(s))" in warnings[0]  # the fixture's 10 cases, 60/20/20
