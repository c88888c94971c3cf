"""Deepgrow 2D: slice samples from 3D volumes (:mod:`.prepare`), simulated clicks for training and
scoring (:mod:`.clicks`) and click-driven inference (:mod:`.annotate`)."""
