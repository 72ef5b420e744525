"""The Qt desktop front end (adapters over mixdesk.core; widgets only display)."""
