"""Tables as a terminal shows them: at most 120 characters a line, the telling columns kept."""

from __future__ import annotations

from dqar_bench.views import markdown
from dqar_bench.views.terminal import WIDTH, fit_tables


def wide_table() -> str:
    header = ["case", "parts (gate / cache / quantizer / scheduler)"] + [f"extra column {i}" for i in range(12)] + ["speedup [95% CI]", "PSNR dB"]
    rows = [
        ["baseline", "none", *["1.0"] * 12, "1.00x [1.00, 1.00]", "(reference)"],
        ["a|b", "dqar(threshold=2.34, snr_low=0.1, snr_high=1000000000.0) / attention-output / int8 / all", *["2.5"] * 12, "1.42x [1.30, 1.50]", "38.1"],
    ]
    return "# suite\n\n" + markdown.table(header, rows, markdown.left_then_right(len(header), 2)) + "\n\n- " + "a long note " * 20


def test_a_wide_table_keeps_case_speedup_and_psnr_within_120_columns():
    text = wide_table()
    assert max(len(line) for line in text.splitlines()) > WIDTH
    fitted = fit_tables(text)
    lines = fitted.splitlines()
    assert all(len(line) <= WIDTH for line in lines), max(lines, key=len)
    head = next(line for line in lines if line.startswith("| case"))
    assert "speedup [95% CI]" in head and "PSNR dB" in head
    assert "a\\|b" in fitted  # the escaped pipe of a case name survives
    note = " ".join(lines[lines.index(next(line for line in lines if line.startswith("(not shown"))):][:3])
    assert "extra column 11" in note and "table.md" in note  # wrapped: it names more than a line holds
    table = [line for line in lines if line.startswith("|")]
    assert len({len(line) for line in table}) == 1  # padded: every line as long as the header
    assert lines[-1].startswith("  ") and lines[-2].startswith(("- ", "  "))  # the bullet's wrapped lines stay under its text


def test_a_narrow_table_keeps_every_column():
    text = markdown.table(["case", "ms"], [["baseline", "1.0"], ["x", "12.5"]], "lr")
    fitted = fit_tables(text).splitlines()
    assert fitted == ["| case     |   ms |", "|----------|-----:|", "| baseline |  1.0 |", "| x        | 12.5 |"]
