"""The Hydra configs of every persam entry point, shipped as the package ``persam.conf``.

The folder lives at the top of the repository (``conf/``, the product's layout) and
``persam/conf`` links to it, so the same files are used from a checkout (``PYTHONPATH``), from an
editable install and, copied into the wheel, from a normal ``pip install``. Entry points load
their configs from :data:`CONFIG_DIR`, never from a path relative to the working folder.
"""

from pathlib import Path

#: Absolute path of the config folder (`hydra.main(config_path=CONFIG_DIR)`,
#: `hydra.initialize_config_dir(CONFIG_DIR)`).
CONFIG_DIR: str = str(Path(__file__).absolute().parent)

__all__ = ["CONFIG_DIR"]
