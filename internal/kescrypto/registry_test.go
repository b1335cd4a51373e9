package kescrypto

import "google.golang.org/protobuf/reflect/protoregistry"

func protoregistryFiles() *protoregistry.Files { return protoregistry.GlobalFiles }
