"""The trace simulator: a queue, its workers and a scaling policy (ours, or a model of KEDA + HPA) in virtual time."""
