import sys
from pathlib import Path

# tests/helpers.py is the one shared helper module (tiny models, example inputs).
sys.path.insert(0, str(Path(__file__).parent))
