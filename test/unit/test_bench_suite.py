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


def test_convergence_prior_points_are_read_sorted_and_bad_lines_named(tmp_path):
    from benchmarks.bev_convergence import read_prior

    csv = tmp_path / "prior.csv"
    csv.write_text("# minutes,nds,map\n20,0.042,0.014\n10,0.042,0.008  # first snapshot\n\n")
    assert read_prior(csv) == [(10.0, 0.042, 0.008), (20.0, 0.042, 0.014)]
    csv.write_text("10,0.04\n")
    with pytest.raises(SystemExit, match=r"prior\.csv:1: expected 'minutes,nds,map'"):
        read_prior(csv)
