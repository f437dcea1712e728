"""The dashboard's panels. Each one copies what it shows out of the RunState in `show()` (under
the app's lock, in the UI thread) and draws that copy in `render()`, sized to the terminal."""

from tui.widgets.chart import LossChart
from tui.widgets.events import EventsPanel
from tui.widgets.header import RunHeader
from tui.widgets.judge import JudgePanel
from tui.widgets.ranks import RanksPanel
from tui.widgets.samples import SamplesPanel
from tui.widgets.statusbar import StatusBar
from tui.widgets.throughput import ThroughputPanel

__all__ = [
    "EventsPanel",
    "JudgePanel",
    "LossChart",
    "RanksPanel",
    "RunHeader",
    "SamplesPanel",
    "StatusBar",
    "ThroughputPanel",
]
