import math

from fedseg.engine.metrics import DiceScores
from fedseg.results import SiteScore, pool, render_table, with_pooled


def test_pooling_equals_scoring_all_cases_together():
    a = DiceScores(("liver", "tumour"), [[0.9, 0.5], [0.8, math.nan]])
    b = DiceScores(("liver", "tumour"), [[0.7, 0.1], [0.6, 0.3], [0.5, math.nan]])
    together = DiceScores(("liver", "tumour"), a.per_case + b.per_case)
    pooled = pool([SiteScore.from_scores(a), SiteScore.from_scores(b)])
    assert pooled.cases == 5
    for name, value in together.per_class().items():
        assert math.isclose(pooled.dice[name], value)
    assert pooled.counts == {"liver": 5, "tumour": 3}


def test_metrics_round_trip_through_flat_keys():
    scores = DiceScores(("Liver tumour",), [[0.25], [math.nan], [0.75]])
    metrics = scores.as_metrics("test")
    assert metrics["test_dice_liver_tumour"] == 0.5 and metrics["test_n_liver_tumour"] == 2
    back = SiteScore.from_metrics(metrics, "test", ("Liver tumour",))
    assert back.dice == {"Liver tumour": 0.5} and back.counts == {"Liver tumour": 2} and back.cases == 3


def test_table_has_a_row_per_model_and_site():
    s = SiteScore(2, {"spleen": 0.9}, {"spleen": 2})
    table = render_table({"final": with_pooled({"site-1": s, "site-2": s})}, ("spleen",))
    assert table.count("\n") == 4 and "pooled" in table and "0.9000" in table
