"""notebooks/compare_backtests.ipynb runs headless on two small backtests (so it never rots)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from test_backtest_runner import HoursModel, history

from retryopt.features.decisions import Constraints
from retryopt.serving.policies import FixedSchedule
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.report import write_outputs
from retryopt.training.backtest.runner import run_backtest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_backtests.ipynb"


def _kernel_name() -> str:
    """Use "python3" when it points at this interpreter; else register one for it."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().get_all_specs()
    spec = specs.get("python3")
    if spec and Path(spec["spec"]["argv"][0]).resolve() == Path(sys.executable).resolve():
        return "python3"
    from ipykernel.kernelspec import install

    install(user=True, kernel_name="retryopt-test", display_name="retryopt (tests)")
    return "retryopt-test"


def test_compare_notebook_runs(tmp_path: Path) -> None:
    dirs = {}
    for name, explore in (("explored", 0.5), ("fixed-history", 0.0)):
        res = run_backtest(
            history(300, seed=11, explore=explore),
            {"logged": None, "fixed:96,168": FixedSchedule((96.0, 168.0))},
            config=BacktestConfig(n_boot=20, fit_dm=False, constraints=Constraints(max_retries=2)),
            dm_model=HoursModel(),
        )
        dirs[name] = str(write_outputs(res, tmp_path / name))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = f"RUNS = {dirs!r}"
    NotebookClient(
        nb, timeout=120, kernel_name=_kernel_name(), resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(
        str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs
    )
    assert "fixed:96,168" in text and "explored" in text
    assert "no exploration" in text  # the second run's warning is shown
