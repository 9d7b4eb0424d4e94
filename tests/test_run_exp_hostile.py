"""Issue 34: run_exp.sh and the sweep's Slurm flags refuse, in one line before anything is planned, what
would run nothing, run elsewhere, plan one folder twice or fail once per configuration."""
import pytest
from test_run_exp import sh

from tools.sweep_slurm import parse_extra, parse_time
from utils import UserError


def _refused(r) -> str:
    assert r.returncode == 2 and r.stdout == "", r.stdout
    (line,) = r.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize("extra, says", [("--lambd 3 -h", "-h/--help"), ("--help", "-h/--help"),
                                         ("--folder X", "--folder"), ("--filename one", "--filename")])
def test_extra_cannot_ask_for_help_or_move_the_runs(tmp_path, extra, says):
    line = _refused(sh("--dry-run", "--quick", "--extra", extra, tmp=tmp_path))
    assert says in line and "--extra" in line, line


@pytest.mark.parametrize("opt, values, same", [("--sigmas", "0.05 .5e-1", "0.05 and .5e-1"),
                                                ("--lambdas", "0 16 16.0", "16 and 16.0"),
                                                ("--lambdas", "0 1e1 10", "1e1 and 10")])
def test_two_spellings_of_one_value_are_refused(tmp_path, opt, values, same):
    line = _refused(sh("--dry-run", "--quick", opt, values, tmp=tmp_path))
    assert opt in line and same in line, line


def test_close_values_are_two_configurations(tmp_path):
    r = sh("--dry-run", "--quick", "--sigmas", "0.05 0.050000001", "--lambdas", "0 16", tmp=tmp_path)
    assert r.returncode == 0 and "4 to run" in r.stdout + r.stderr, r.stdout + r.stderr


def test_seeds_beyond_what_main_takes_are_refused_in_a_dry_run(tmp_path):
    line = _refused(sh("--dry-run", "--quick", "--seeds", "9223372036854775808", tmp=tmp_path))
    assert "9223372036854775808" in line and "2**63 - 1" in line
    r = sh("--dry-run", "--quick", "--seeds", "9223372036854775807", tmp=tmp_path)
    assert r.returncode == 0, r.stderr


def test_slurm_time_and_extra_are_checked():
    with pytest.raises(UserError, match="longer than a year"):
        parse_time("99999999999999999999")
    assert parse_time("365-00:00:00") == 365 * 24 * 60
    with pytest.raises(UserError, match="--slurm_extra"):
        parse_extra('qos="x')
