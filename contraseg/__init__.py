"""contraseg's neutral layer: helpers every package may import.

Seeding and exact resume (:mod:`contraseg.seeding`), figures (:mod:`contraseg.figures`) and
sharded feature extraction (:mod:`contraseg.extraction`).  It imports none of
``datamodules``, ``lightning_modules``, ``callbacks`` or ``experiments``.
"""
