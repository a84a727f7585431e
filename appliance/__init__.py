"""PAL-adin OS: the assistant appliance that runs on the box."""

__version__ = "0.1.0"
