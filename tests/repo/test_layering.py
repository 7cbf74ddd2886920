"""The layering contracts (pyproject.toml's [tool.importlinter], docs/architecture.md) hold on
the package as it is, and each one fails when an import breaks it on purpose."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_package_keeps_every_layering_contract() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("proxy_addon/tokens/budget.py", "import mitmproxy",
     "tokens/ is the core: free of I/O and of the proxy around it"),
    ("proxy_addon/tokens/budget.py", "from ..ops import metrics",
     "tokens/ is the core: free of I/O and of the proxy around it"),
    ("proxy_addon/gateway/throttle.py", "from ..store import factory",
     "gateway/ reaches stores only through their port types, never the CLI"),
    ("proxy_addon/store/memory.py", "from ..cli import main",
     "nothing imports cli/ (the composition root)"),
    ("proxy_addon/gateway/errors.py", "import rc_emulator",
     "the product never imports the emulator"),
    ("rc_emulator/policy.py", "import proxy_addon",
     "the emulator stands alone: it never imports the product"),
    ("proxy_addon/events/frames.py", "from mitmproxy import http",
     "events/ is free of mitmproxy, the gateway and the stores"),
], ids=["tokens-mitmproxy", "tokens-ops", "gateway-store-backend", "cli-imported",
        "product-emulator", "emulator-product", "events-mitmproxy"])
def test_a_contract_broken_on_purpose_fails(tmp_path: Path, module: str, line: str,
                                            contract: str) -> None:
    shutil.copytree(ROOT / "proxy_addon", tmp_path / "proxy_addon",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "emulator" / "rc_emulator", tmp_path / "rc_emulator",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # broken on purpose\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert broken == [f"{contract} BROKEN"], result.stdout
