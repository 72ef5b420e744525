"""The inference engine: llama.cpp in a child process, and the app's handle on it."""

from mixdesk.core.engine.client import ChatStream, Engine
from mixdesk.core.engine.protocol import (
    ChatDone,
    GenerationStats,
    LoadConfig,
    ModelInfo,
    SamplingParams,
    TextDelta,
)

__all__ = [
    "ChatDone",
    "ChatStream",
    "Engine",
    "GenerationStats",
    "LoadConfig",
    "ModelInfo",
    "SamplingParams",
    "TextDelta",
]
