"""TuobaOS composer: builds board images from data (boards/, recipes/, kernel/, overlays/)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tuoba")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
