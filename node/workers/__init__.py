"""Processes: a supervisor (no gRPC in it) and N worker processes serving one port.

`supervisor` starts, watches, restarts and drains the workers and serves /metrics;
`worker` is what each spawned process runs; `exporter` turns the shared counters into
Prometheus text.
"""
