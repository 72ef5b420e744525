"""MixDesk: run Mixtral-class models on one ordinary machine."""

__version__ = "0.1.0"
APP_NAME = "MixDesk"
APP_ID = "io.github.mixdesk.MixDesk"
