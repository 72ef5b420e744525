"""MixDesk's core: everything that works without Qt (models, engine, hardware, storage)."""
