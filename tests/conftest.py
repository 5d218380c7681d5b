import sys
from pathlib import Path

# Test helpers (daemon_process) are importable from every test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))
