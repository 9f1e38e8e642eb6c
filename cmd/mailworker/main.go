// Command mailworker sends an organisation's outbound mail through Microsoft
// Graph from jobs on NATS JetStream. See the README for the subcommands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…"; commit
// with "-X main.commit=…" where the Go toolchain records no VCS revision
// (a build from a tree without .git, such as the container image's).
var (
	version = "dev"
	commit  = ""
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runCLI(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Environ())
	stop()
	os.Exit(code)
}
