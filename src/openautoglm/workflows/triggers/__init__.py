"""Triggers: what starts workflow runs besides a person — cron schedules and broker messages.

Every trigger starts runs through the :class:`~openautoglm.workflows.model.RunStarter` port with a
``dedupe_key`` derived from what caused the run (a schedule slot, a message id), so a cause seen
twice — by two replicas, or again after a crash — starts one run.
"""
