"""recognizer: Hydra-configured CTC recognizers for handwriting and speech."""

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config tree, shipped inside the package (``recognizer/conf/``), so an installed wheel has it too.
#: Your own config groups: ``recognizer-train --config-dir my_conf ...`` adds a folder to Hydra's search path.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
