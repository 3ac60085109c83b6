"""Mini OSS: an object storage node that takes and serves files over gRPC streams.

Modules, one concern each:
  config       the settings object          errors      typed contract errors
  names        name validation, disk names  session_rules  pure upload-offset rules
  store        the node logic                streams     one upload's / download's state
  catalog      SQLite sessions and objects   storage     parts/, objects/, index/ on disk
  service      the gRPC servicer (parse, map) status     errors -> google.rpc.Status
  wire         hand codec for chunks         metrics     shared-memory counters
  server       one worker's gRPC server      workers/    supervisor, worker, /metrics
  auth         token interceptor             ratelimit   per-client token buckets
  client       the Python client library     cli         `mini-oss` command line
"""

__version__ = "0.1.0"
