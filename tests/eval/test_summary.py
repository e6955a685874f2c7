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


def test_summary_has_a_mask_kmeans_row_and_the_saliency_line():
    metrics = {
        "num_classes": 21,
        "clustering.21.miou": 0.1234,
        "clustering.21.acc": 0.5,
        "mask_kmeans.miou": 0.3456,
        "mask_kmeans.acc": 0.7891,
        "mask_kmeans.miou_sd": 0.01,
        "mask_kmeans.clusters": 21,
        "saliency.iou": 0.4321,
        "saliency.fg_fraction": 0.25,
        "saliency.gt_fg_fraction": 0.3125,
    }
    assert format_summary(metrics).splitlines() == [
        "method" + " " * 24 + "mIoU %    acc %",  # names padded to the longest, 27
        "clustering C=21 (Hungarian)    12.34    50.00",
        "mask k-means (5 seeds)         34.56    78.91",
        "saliency: IoU 43.21 % with the ground-truth foreground "
        "(predicted 25.0 % of pixels, true 31.2 %)",
    ]


def test_a_skipped_mask_kmeans_has_no_row():
    metrics = {
        "num_classes": 12,
        "clustering.12.miou": 0.2,
        "clustering.12.acc": 0.4,
        "mask_kmeans.skipped": "12 k-means clusters need at least as many images ...",
    }
    assert "mask k-means" not in format_summary(metrics)
    assert len(format_summary(metrics).splitlines()) == 2
