// Command widelog-ferretdb runs FerretDB v1 (MongoDB wire protocol) with its SQLite backend
// for widelog's tests. It embeds github.com/FerretDB/FerretDB/ferretdb instead of building
// cmd/ferretdb, because a `go install` of cmd/ferretdb lacks the generated
// build/version/version.txt and panics at start; the embedded package skips that check
// and keeps telemetry off.
//
// Built and started by scripts/services.sh; the binary lives in the cache dir, not here.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	dataDir := flag.String("data-dir", "", "directory for the SQLite files (created if missing)")
	logLevel := flag.String("log-level", "warn", "debug, info, warn or error")
	flag.Parse()

	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "widelog-ferretdb: -data-dir is required")
		os.Exit(2)
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "widelog-ferretdb: bad -log-level %q: %v\n", *logLevel, err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "widelog-ferretdb: %v\n", err)
		os.Exit(1)
	}
	// The SQLite URL must start with "file:", end with "/" and name an existing directory.
	if err = os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "widelog-ferretdb: %v\n", err)
		os.Exit(1)
	}
	sqliteURL := "file:" + strings.TrimSuffix(dir, "/") + "/"

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "widelog-ferretdb: %v\n", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// New has bound the port already; Run accepts connections until ctx is canceled.
	fmt.Fprintf(os.Stderr, "widelog-ferretdb: listening on %s, data in %s\n", *listen, sqliteURL)

	if err = f.Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "widelog-ferretdb: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "widelog-ferretdb: stopped")
}
