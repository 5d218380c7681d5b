"""The generated protobuf and gRPC modules of mlxd's protocol (proto/), shared by the daemon and the client."""
