"""The printed summary: the statistics table and the skipped / missing lines, character for character."""

from __future__ import annotations

import numpy as np

from raytune_st.mining.stats import missing_line, score_histogram_png, skipped_lines, stats_json, stats_table


def test_table_layout_and_torch_statistics():
    lines = stats_table(np.array([0.9, 0.7, 0.8], np.float32), np.array([0.5, 0.1], np.float32), np.array([0.4, 0.6], np.float32))
    assert lines[0] == "Metric       Positive       Negative     Difference"
    assert lines[1] == "Count               3              2               "
    assert lines[3] == "Median         0.8000         0.1000         0.4000"  # torch.median: the lower middle value
    assert lines[6] == "25%            0.7500         0.2000         0.4500"


def test_empty_negatives_print_like_sentence_transformers():
    lines = stats_table(np.array([0.9], np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
    assert lines[1].split() == ["Count", "1", "0"]
    assert lines[2].split()[2] == "nan" and lines[5].split()[2] == "inf" and lines[9].split()[2] == "-inf"
    assert stats_json(np.array([0.9]), np.zeros(0), np.zeros(0))["min"]["negative"] is None


def test_skipped_and_missing_lines():
    assert skipped_lines({"relative_margin": (1234, 0.0836)}, {"relative_margin": 0.05}) == [
        "Skipped 1,234 potential negatives (8.36%) due to the relative_margin of 0.05."
    ]
    assert missing_line(0, 10, range_min=0, absolute_margin=None, relative_margin=None, max_score=None) is None
    assert missing_line(3, 10, range_min=0, absolute_margin=None, relative_margin=None, max_score=None) == (
        "Could not find enough negatives for 3 samples (30.00%). Consider adjusting the range_max parameter "
        "if you'd like to find more valid negatives."
    )
    line = missing_line(1, 8, range_min=2, absolute_margin=0.1, relative_margin=None, max_score=0.9)
    assert "range_max, range_min, absolute_margin and max_score parameters" in line


def test_histogram_is_a_png():
    assert score_histogram_png(np.array([0.8, 0.9]), np.array([0.2]), "t").startswith(b"\x89PNG")
