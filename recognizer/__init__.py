"""recognizer: Hydra-configured CTC recognizers for handwriting and speech."""

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config tree (``conf/`` at the repository root; the package is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
