"""The dashboard's inline SVG charts: empty, one point, many points, and escaped text."""

from __future__ import annotations

import re

from widelog.admin.svg import Series, line_chart, number


def path_points(svg: str) -> list[int]:
    """How many points each stroked line passes through."""
    return [len(re.findall(r"[ML]", d)) for d in re.findall(r'<path d="([^"]+)" fill="none"', svg)]


def test_a_chart_without_points_says_no_data_yet_and_draws_no_line():
    svg = line_chart("Error rate", [Series("errors", [], "#c00")])
    assert "no data yet" in svg
    assert [] == path_points(svg)
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")


def test_a_chart_without_any_series_renders_too():
    assert "no data yet" in line_chart("Nothing", [])


def test_one_point_is_a_dot_because_a_line_needs_two():
    svg = line_chart("p95", [Series("p95", [(100.0, 42.0)], "#00c")])
    assert 1 == svg.count("<circle")
    assert [] == path_points(svg)
    assert "no data yet" not in svg


def test_many_points_make_one_line_per_series_through_every_point():
    many = [(float(t), float(t % 7)) for t in range(50)]
    svg = line_chart(
        "requests", [Series("a", many, "#00c"), Series("b", many[:10], "#0c0")], area=True
    )
    assert [50, 10] == path_points(svg)
    assert 2 == svg.count('fill-opacity="0.15"')  # an area under each line


def test_the_y_axis_runs_from_zero_to_the_largest_value_or_the_given_maximum():
    points = [(0.0, 5.0), (1.0, 250.0)]
    assert ">250 ms</text>" in line_chart("t", [Series("s", points, "#000")], unit=" ms")
    assert ">100%</text>" in line_chart("t", [Series("s", points, "#000")], unit="%", y_max=100)


def test_all_zero_values_still_draw_a_line_on_the_floor():
    svg = line_chart("queue", [Series("q", [(0.0, 0.0), (1.0, 0.0)], "#000")])
    assert [2] == path_points(svg)


def test_titles_names_and_labels_are_escaped():
    hostile = "<script>alert(1)</script>"
    svg = line_chart(
        hostile,
        [Series(hostile, [(0.0, 1.0)], "#000"), Series("b", [(1.0, 2.0)], "#111")],
        x_label=lambda _: hostile,
    )
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg


def test_axis_numbers_are_short():
    assert ["0", "0.25", "3.5", "42", "1,250"] == [number(v) for v in (0, 0.25, 3.5, 42, 1250)]
