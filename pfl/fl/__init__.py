"""Federated core: batches, the Lightning client trainer, aggregation, the server loop."""
