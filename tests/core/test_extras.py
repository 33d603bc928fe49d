"""What a plain `pip install -e .` (no extras) does when an input needs an optional package: one line naming the
extra."""

import subprocess
import sys

from runs import REPO


def test_parquet_without_pyarrow_names_the_extra(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    # `sys.modules["pyarrow"] = None` makes `import pyarrow` fail as it does where the package is not installed
    code = (
        "import sys; sys.modules['pyarrow'] = None; from trainer.data.prepare import main; "
        f"sys.exit(main(['--input', {str(tmp_path / '*.parquet')!r}, '--out', {str(tmp_path / 'out')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: Parquet input needs pyarrow: pip install -e ".[parquet]"'
    assert not (tmp_path / "out").exists()  # refused before anything was written
