from vice.eval.summary import figure_count, format_summary, headline_key, mapping_name


def test_headline_is_clustering_at_the_class_count():
    metrics = {"num_classes": 8, "clustering.8.miou": 0.1, "clustering.16.miou": 0.2}
    assert headline_key(metrics) == "clustering.8.miou"
    assert figure_count([16, 32], 8) == 16 and figure_count([4], 8) == 4
    assert figure_count([], 8) is None
    assert (mapping_name(8, 8), mapping_name(16, 8)) == ("Hungarian", "majority")


def test_summary_states_the_margin_over_the_strongest_floor():
    metrics = {
        "num_classes": 8,
        "clustering.8.miou": 0.15,
        "clustering.8.acc": 0.3,
        "margin.clustering.8.miou": 0.05,
        "margin.clustering.8.miou.floor": "raw_colour",
        "floors.raw_colour.clustering.8.miou": 0.10,
    }
    text = format_summary(metrics)
    assert "raw_colour" in text and "+5.00 points" in text


def test_an_empty_evaluation_has_no_headline():
    assert headline_key({}) is None
    format_summary({})  # no KeyError: what a stage prints when eval.enabled=false
