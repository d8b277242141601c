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
    assert figure_row("edge_https_rps_1w", 79.0, 100.0)["target_met"] is False  # needs >= 0.8x (issue 18)
    assert figure_row("edge_https_rps_1w", 80.0, 100.0)["target_met"] is True


def test_tunnel_target_needs_the_ratio_and_the_absolute_floor():
    assert figure_row("tunnel_bulk_mbps", 490.0, 400.0)["target_met"] is False   # >= 1.2x but < 500 MB/s
    assert figure_row("tunnel_bulk_mbps", 600.0, 580.0)["target_met"] is False   # < 1.2x the relay pair
    assert figure_row("tunnel_bulk_mbps", 700.0, 580.0)["target_met"] is True


def test_figures_without_a_target_are_not_judged():
    assert figure_row("edge_abuse_cpu_us", 10.0, None)["target_met"] is None


def test_issue_18_edge_targets():
    assert figure_row("edge_https_rps", 69.0, 100.0)["target_met"] is False          # >= 0.7x nginx 2 workers
    assert figure_row("edge_https_rps", 70.0, 100.0)["target_met"] is True
    assert figure_row("edge_https_64k_rps", 59.0, 100.0)["target_met"] is False      # >= 0.6x
    assert figure_row("edge_https_close_rps", 60.0, 100.0)["target_met"] is True     # >= 0.6x
    assert figure_row("edge_https_close_rps", 10.0, 100.0)["target_met"] is False
    assert figure_row("edge_workers2_vs_1", 99.0, 100.0)["target_met"] is False      # 2 workers not slower
    assert figure_row("edge_workers2_cpu_us", 33.0, 30.0)["target_met"] is True      # flat: within 10 %
    assert figure_row("edge_workers2_cpu_us", 34.0, 30.0)["target_met"] is False


def test_p50_added_is_judged_on_ours_alone_and_strictly():
    assert figure_row("edge_p50_added_ms", 0.24, 0.1)["target_met"] is True
    assert figure_row("edge_p50_added_ms", 0.25, 0.1)["target_met"] is False
    assert figure_row("edge_p50_added_ms", 0.2, None)["target"] == "ours < 0.25 ms"


def test_cpu_budgets_are_judged_on_ours_with_or_without_a_peer():
    row = figure_row("edge_cpu_us_per_request", 30.0, 34.5)
    assert row["target_met"] is True and row["ratio"] == round(30.0 / 34.5, 4)   # the peer is shown, not judged
    assert figure_row("edge_cpu_us_per_request", 30.1, 50.0)["target_met"] is False
    assert figure_row("agent_cpu_us_per_request", 19.0, None)["target_met"] is True
    assert figure_row("agent_cpu_us_per_request", 21.0, None)["target_met"] is False
    assert figure_row("agent_cpu_us_per_request", None, None)["target_met"] is None
    assert figure_row("agent_cpu_us_per_request", 1.0, None)["target"] == "ours <= 20 us/req"


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
