"""The evaluation harness beside the core (never imported by it): real models and data from
pip packages (``zoo``, ``datasets``), task metrics (``quality``), the demo, and the models
``sparc bench`` accepts by name (``bench_models``)."""
