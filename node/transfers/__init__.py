"""Transfers as a person (or a program) runs them, on top of the client library: resuming
across runs (`resume`, `transfer_state`), several streams for one object (`parallel_plan`,
`parallel_download`, `parallel_upload`), whole directories (`tree`, `tree_run`), and the
progress line (`progress`). The gRPC calls themselves are `node.client`'s."""
