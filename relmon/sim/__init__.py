"""The simulation: traffic whose truth is known by construction, to drive relmon from outside.

Everything here makes or replays traffic and checks what relmon made of it: the synthetic
catalogue built on the real WANDS queries (:mod:`~relmon.sim.synth`, its words in
``vocabulary.json``), the bundled ESCI slice as a replayable catalogue
(:mod:`~relmon.sim.realdata`), scenarios of true bad-case rates and their shifts
(:mod:`~relmon.sim.scenario`), the replayer into Kafka (:mod:`~relmon.sim.replay`), the
estimation validation and in-memory replays through the real processor
(:mod:`~relmon.sim.validation`, :mod:`~relmon.sim.alerts`) and the chaos run
(:mod:`~relmon.sim.chaos`).

It exists because a replay's truth is known row by row, so an estimate, an alert or a recovery
can be checked against it exactly. It is never the evidence that the model works: a synthetic
catalogue rewards whatever generated it; that evidence is the real human ESCI labels (README,
"Ground truth: real human labels"). The serving path (worker, scorer, alerts, dashboards) does
not import this package; the CLI's ``replay`` and ``demo``, the benches and the tests do.
"""
