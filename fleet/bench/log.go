package main

import (
	"io"
	"log/slog"

	sdklog "go.temporal.io/sdk/log"
)

func quietLogger() sdklog.Logger {
	return sdklog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
}
