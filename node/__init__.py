"""Mini OSS: an object storage node that takes and serves files over gRPC streams.

Modules, one concern each:
  config       the settings object          errors      typed contract errors
  names        name validation, disk names  session_rules  pure upload-offset rules
  catalog      SQLite sessions and objects   storage     parts/, objects/, index/ on disk
  service      the gRPC servicer (parse, map) status     errors -> google.rpc.Status
  server       one worker's gRPC server      client      the Python client library
  cli          `mini-oss` command line
"""

__version__ = "0.1.0"
