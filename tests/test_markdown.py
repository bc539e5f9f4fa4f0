"""The one Markdown table writer, as `vlft compare` and sweep.md use it."""

from vlft.markdown import markdown_table
from vlft.sweep import mean_std_cell


def test_columns_in_first_seen_order_missing_values_as_a_dash():
    rows = [{"run": "a", "loss": 0.123456}, {"run": "b", "rank": 4}]
    assert markdown_table(rows) == ("| run | loss | rank |\n|---|---|---|\n"
                                    "| a | 0.1235 | - |\n| b | - | 4 |")


def test_sweep_cells_are_mean_plus_minus_std():
    rows = [{"method": "dora", "seeds": 3, "vqa_accuracy": (54.0, 4.0)}]
    assert markdown_table(rows, mean_std_cell).splitlines()[2] == "| dora | 3 | 54 ± 4 |"
