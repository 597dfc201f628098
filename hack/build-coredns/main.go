// Command build-coredns builds (or finds in ~/.cache/kip/coredns) the CoreDNS binary kip
// deploys as cluster DNS, from hack/tools/coredns, and prints its path on the last line.
// hack/test.sh runs it once so the tests and kip up that need CoreDNS find it built.
//
// Usage (from the repository root): go run ./hack/build-coredns
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/kip-dev/kip/internal/clusterdns"
)

func main() {
	path, err := clusterdns.Binary(context.Background(), clusterdns.BuildOptions{
		Log: func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "build-coredns:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}
