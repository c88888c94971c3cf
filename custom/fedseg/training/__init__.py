"""The one run loop (epochs, validation cadence, best model) and what a finished run writes.

Every runner trains through :func:`fedseg.training.loop.run_epochs`: the local and pooled
``fedseg train``, each Ray Train worker, an FL site's local round (in process or on Ray) and a
Ray Tune trial. They differ only in the callbacks they pass (checkpointing, tracking, reporting).
"""
