"""``code_files=``: local modules travel with the session and are importable on the workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from starburst_executor import StarburstExecutor
from starburst_executor.code_files import pack_code


def _use_shipped() -> tuple[int, str]:
    # Only the workers have these (shipped by code_files=): nothing for mypy to find.
    import shipped_mod  # type: ignore[import-not-found]
    from shipped_pkg.inner import tag  # type: ignore[import-not-found]

    return shipped_mod.triple(7), tag()


def test_shipped_modules_are_importable_by_tasks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "shipped_pkg").mkdir(parents=True)
    (src / "shipped_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    (src / "shipped_pkg" / "__init__.py").write_text("")
    (src / "shipped_pkg" / "inner.py").write_text("def tag():\n    return 'from the zip'\n")
    with StarburstExecutor(
        max_workers=1,
        store=str(tmp_path / "store"),
        code_files=[src / "shipped_mod.py", src / "shipped_pkg"],
    ) as ex:
        assert ex.submit(_use_shipped).result(timeout=60) == (21, "from the zip")


def test_without_code_files_the_workers_lack_the_module(tmp_path: Path) -> None:
    with StarburstExecutor(max_workers=1, store=str(tmp_path / "store")) as ex:
        with pytest.raises(ModuleNotFoundError, match="shipped_mod"):
            ex.submit(_use_shipped).result(timeout=60)


def test_bad_code_files_fail_at_construction(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="not a Python module"):
        StarburstExecutor(
            max_workers=1, store=str(tmp_path / "store"), code_files=[tmp_path / "data.csv"]
        )
    with pytest.raises(FileNotFoundError):
        pack_code([tmp_path / "missing.py"])
