from pathlib import Path

from bench.report import markdown_table, record


def test_record_appends_a_dated_section_with_the_command(tmp_path: Path) -> None:
    target = tmp_path / "benchmarks.md"
    table = markdown_table(["case", "ms"], [["pipelined", 1.5], ["naive", 30.0]])
    record("Observation", table, argv=["bench/bench_observe.py", "--queues", "3000"], path=target)
    record("Second", "figures", argv=["bench/bench_other.py"], path=target)
    text = target.read_text()
    assert text.startswith("# Benchmarks")
    assert "`python -m bench.bench_observe --queues 3000`" in text
    assert "| pipelined | 1.5 |" in text
    assert text.index("## Observation") < text.index("## Second")
