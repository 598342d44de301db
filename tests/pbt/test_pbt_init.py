"""Every public name of ganno_lightning.pbt resolves, and the store does not import Lightning."""

import subprocess
import sys
from pathlib import Path

import ganno_lightning.pbt as pbt


def test_all_exports_resolve():
    for name in pbt.__all__:
        assert getattr(pbt, name) is not None


def test_store_and_core_import_without_lightning():
    code = "import sys, ganno_lightning.pbt.store, ganno_lightning.pbt.core; print('lightning' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "False"
