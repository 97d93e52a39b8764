"""`randsparse export`: a trained run as a compressed model whose outputs equal the masked model's."""

from __future__ import annotations

import pytest
import torch

from randsparse.accel import load
from randsparse.cli import main
from randsparse.train import fit, load_run
from tests.train._runs import tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, overrides in {
        "cnn": ("epochs=1", "sparsity=0.9"),
        "mlp": ("epochs=1", "sparsity=0.9", "model.name=mlp", "model.options={depth: 2, hidden: 64}"),
        "dense": ("epochs=1", "sparsity=0"),
    }.items():
        fit(tiny_config(*overrides), root / name)
        out[name] = root / name
    return out


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
@pytest.mark.parametrize("fmt", ["auto", "csr"])
def test_exported_model_matches_the_masked_model(runs, kind, fmt, tmp_path, capsys) -> None:
    target = tmp_path / f"{kind}.rsp"
    assert main(["export", str(runs[kind]), "--format", fmt, "--out", str(target)]) == 0
    assert "exported best checkpoint" in capsys.readouterr().out
    loaded = load_run(runs[kind], "best")
    sparse = load(target)
    x = torch.randn(8, *loaded.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = loaded.model(x), sparse(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert target.stat().st_size < (runs[kind] / "checkpoints/best.pt").stat().st_size


def test_default_output_lands_in_the_run_directory(runs) -> None:
    assert main(["export", str(runs["cnn"]), "--which", "last"]) == 0
    assert (runs["cnn"] / "model-last.rsp").is_file()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--format", "zip"], "unknown format"), ([], "dense run")],
    ids=["bad_format", "dense_run"],
)
def test_export_errors_exit_2_with_one_line(runs, args, fragment, capsys) -> None:
    run = runs["dense"] if fragment == "dense run" else runs["cnn"]
    assert main(["export", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err
