"""`ablate models PATTERN`: a pattern the shell expanded, or one that matches nothing, says to quote it."""
from runners.cli import main


def test_a_shell_expanded_or_unmatched_pattern_says_to_quote_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet_ablations.egg-info").mkdir()  # what `resnet*` expands to in a checkout
    assert main(["models", "resnet_ablations.egg-info"]) == 2
    err = capsys.readouterr().err
    assert "the shell expanded an unquoted pattern" in err and "ablate models 'resnet*'" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["models", "nothing*"]) == 2
    assert "quoted" in capsys.readouterr().err
    assert main(["models", "plain2*"]) == 0
    assert "plain20" in capsys.readouterr().out
