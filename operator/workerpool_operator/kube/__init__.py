"""The Kubernetes side: kopf wiring, the API, reconciling WorkerPools into Deployments, status, Events, metrics."""
