"""The node's HTTP/1.1 face, beside the gRPC servicer: downloads by sendfile, signed URLs and
tus uploads on the same objects and sessions (API.md, "HTTP"). `face` runs it in each worker;
`rules` and `signing` are pure; `downloads` and `tus` are the handlers."""
