"""The benchmark suite of ``make bench`` / ``qd-perception bench`` names scripts and options that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import run_all

ROOT = Path(__file__).resolve().parents[2]


def test_every_suite_entry_is_a_script_with_those_options():
    assert run_all.SUITE
    for bench in run_all.SUITE:
        script = ROOT / "benchmarks" / f"{bench.name}.py"
        assert script.is_file(), bench.name
        source = script.read_text()
        assert 'if __name__ == "__main__":' in source, bench.name
        for flag in (a for a in bench.args if a.startswith("--")):
            assert f'"{flag}"' in source, f"{bench.name} has no option {flag}"


def test_missing_inputs_skip_and_unknown_names_fail(tmp_path, capsys):
    needy = next(b for b in run_all.SUITE if b.needs)
    assert run_all.missing_inputs(needy, tmp_path) == list(needy.needs)
    assert run_all.run([needy.name], root=tmp_path) == 0
    assert f"| {needy.name} | skipped: missing" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no_such_benchmark"):
        run_all.run(["no_such_benchmark"], root=tmp_path)
