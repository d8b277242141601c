"""bench/summary.py: headline figures, ratios, targets, rendering."""
from __future__ import annotations

from bench.summary import REQUIRED, complete_summary, figure_row, median, ratio, render_markdown, render_table, \
    unavailable_row


def test_ratio_is_ours_over_peer_and_none_when_either_is_missing():
    assert ratio(50.0, 100.0) == 0.5
    assert ratio(None, 100.0) is None
    assert ratio(50.0, None) is None
    assert ratio(50.0, 0.0) is None


def test_median_ignores_missing_runs():
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None]) is None


def test_row_has_the_keys_issue_7_names_and_judges_the_target():
    row = figure_row("dns_plain_qps", 60000.0, 100000.0)
    assert {"figure", "ours", "peer", "peer_name", "ratio", "unit"} <= set(row)
    assert row["ratio"] == 0.6 and row["peer_name"] == "gdnsd" and row["unit"] == "qps"
    assert row["target_met"] is True
    assert figure_row("edge_https_rps_1w", 80.0, 100.0)["target_met"] is False  # needs >= 0.9x


def test_tunnel_target_needs_the_ratio_and_the_absolute_floor():
    assert figure_row("tunnel_bulk_mbps", 450.0, 400.0)["target_met"] is False   # >= 1x but < 500 MB/s
    assert figure_row("tunnel_bulk_mbps", 600.0, 580.0)["target_met"] is True


def test_figures_without_a_target_are_not_judged():
    assert figure_row("edge_https_close_rps", 10.0, 100.0)["target_met"] is None


def test_unavailable_figure_has_nulls_and_a_note():
    row = unavailable_row("edge_https_rps", "not available: edge not built")
    assert row["ours"] is None and row["peer"] is None and row["ratio"] is None
    assert row["note"] == "not available: edge not built"


def test_complete_summary_lists_every_required_figure_in_order():
    rows = complete_summary([figure_row("tunnel_bulk_mbps", 1.0, 2.0)], "not measured")
    keys = [r["figure"] for r in rows]
    assert set(REQUIRED) <= set(keys)
    assert keys.index("dns_plain_qps") < keys.index("tunnel_bulk_mbps")
    assert next(r for r in rows if r["figure"] == "dns_ecs_qps")["note"] == "not measured"


def test_table_and_markdown_show_ratios_and_notes():
    rows = complete_summary([figure_row("dns_plain_qps", 50000.0, 100000.0)], "not measured")
    table = render_table(rows)
    assert "dns_plain_qps" in table and "0.50x" in table and "not measured" in table
    md = render_markdown({"started": "2026-11-28T11:00:00+00:00", "summary": rows,
                          "sections": [{"title": "DNS", "lines": ["x"]}]})
    assert "| dns_plain_qps | 50,000 | 100,000 | 0.50x |" in md
    assert "## DNS" in md
