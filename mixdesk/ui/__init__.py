"""The Qt desktop front end (adapters over mixdesk.core; widgets only display).

Importing it first protects the process from PySide6 builds that release ``None`` once per
call (see :mod:`mixdesk.ui.refcounts`): every window, test and benchmark imports this.
"""

from mixdesk.ui.refcounts import keep_alive

keep_alive()
