"""Click commands of the probe families (SupCon, zero-shot, ensembles, kNN, audits, identities).

``probes/cli.py`` adds every command of :data:`COMMANDS` to the ``probes`` group.
"""

COMMANDS: list = []
