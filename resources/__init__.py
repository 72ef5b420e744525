"""MixDesk's data files (installed as the package ``mixdesk.resources``)."""
