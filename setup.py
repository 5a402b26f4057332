"""Ships the hardware models and search spaces with the package: ``build_py`` copies each folder of
hardware_models/ into the wheel as ``autocompress/_hardware_models/NAME`` with its measurement
CSVs gzipped (the readers take either form), and search_spaces/*.yaml into
``autocompress/_search_spaces``. Everything else is in pyproject.toml."""

import gzip
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).parent / "hardware_models"
SPACES = Path(__file__).parent / "search_spaces"


class BuildWithHardwareModels(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return  # an editable install reads the repository's hardware_models/ directly
        target = Path(self.build_lib) / "autocompress" / "_hardware_models"
        for folder in sorted(p for p in SOURCE.iterdir() if (p / "metadata.json").is_file()):
            out = target / folder.name
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / "metadata.json", out / "metadata.json")
            for name in ("kernels.csv", "models.csv"):
                with open(folder / name, "rb") as plain, gzip.open(out / f"{name}.gz", "wb", compresslevel=9) as packed:
                    shutil.copyfileobj(plain, packed)
        spaces = Path(self.build_lib) / "autocompress" / "_search_spaces"
        spaces.mkdir(parents=True, exist_ok=True)
        for space in sorted(SPACES.glob("*.yaml")):
            shutil.copyfile(space, spaces / space.name)


setup(cmdclass={"build_py": BuildWithHardwareModels})
