"""Seeing and explaining an incident: evidence ranked by cause, each entity's recent scores,
the incident page the daemon serves and `netad explain`.

Where it stands: beside the Scoring stage (service.scoring), after the scorer and the
incident tracker, never in their way::

    Scoring.process ─► scores, incident events ─► evidence.CauseRanker ─► events' evidence by cause ─► sinks
                                              └─► board.IncidentBoard ─► history.ScoreHistory (bounded, saved)
                                                                      └─► book.IncidentBook (recent incidents, saved)
    /incidents (page.py over metrics.py's server)   `netad explain` (text.py, cli.py)   timeline PNG (timeline.py)

The page and `netad explain` read the same records (an Explanation, explanation.py), built
from what a running daemon holds or from what a stopped one left in its state directory
(or from the incident JSON lines a sink wrote).
"""
