"""`make demo`: placeholder until the full loop lands (lists the spaces and FBNet-B)."""

import subprocess
import sys
from pathlib import Path

bin_dir = Path(sys.executable).parent
subprocess.run([bin_dir / "fbnet-search", "spaces"], check=True)
subprocess.run([bin_dir / "fbnet-search", "arch", "FBNet-B", "--space", "fbnet-224"], check=True)
