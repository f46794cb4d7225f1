"""The gRPC API's messages and stubs (proto package cserve.v1), generated from proto/cserve/v1/
when the package is built: generation_pb2, generation_pb2_grpc."""
