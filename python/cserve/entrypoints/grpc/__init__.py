"""The gRPC API (cserve.v1.Generation) served beside the HTTP server, on the same engine."""
