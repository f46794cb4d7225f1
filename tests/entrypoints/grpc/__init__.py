"""Tests of the gRPC API through a real `cserve serve --grpc-port` process and real channels."""
