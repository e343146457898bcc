import sys
from pathlib import Path

# the scenarios' shared test helpers (labexec)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "tests"))
