"""Makes ``python data_toolkit/<step>.py`` work from any folder by putting the repository root on ``sys.path``."""
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
