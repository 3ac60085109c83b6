"""Load generators for a Mini OSS node, and the bare-gRPC ceiling they are compared with.

Entry points (see README.md in this directory for commands and what each figure means):
`upload_bench`, `download_bench`, `small_bench` (many small objects: durable commits per
second), `compare` (the same bench against the bare server and the node in one session, printing
node-to-ceiling ratios) and `bare_server`.

Modules, each small and with one concern:
  cli         flags -> one picklable BenchConfig
  workload    distinct object contents from a pool of prebuilt random chunks
  codec       UploadChunk encoder / DownloadChunk decoder (protobuf wire format, no copies)
  driver      one client process: grpc.aio channels and streams, per-object measurements
  runner      the run: target, client processes, start barrier, aggregation, JSON
  stats       every printed figure, defined once
  procmetrics node / client / machine CPU and RSS via psutil
  targets     start and stop a node or the bare server for a run
  bare_server the oss.v1 service doing nothing but moving messages

Nothing here is imported by the node; this package imports the node only for its generated
protobuf code (`node.pb`).
"""
