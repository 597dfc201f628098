// Command resolve looks up each name given with Go's own resolver (built CGO_ENABLED=0, so it
// follows /etc/resolv.conf: nameservers, search, ndots) and prints "name ip,ip" or
// "name ERROR reason", retrying each for up to -wait. TestClusterDNS runs it in a pod:
// busybox-static's glibc resolver cannot be trusted inside a cell.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

func main() {
	wait := flag.Duration("wait", 30*time.Second, "how long to retry a name that does not resolve")
	flag.Parse()
	for _, name := range flag.Args() {
		end := time.Now().Add(*wait)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			addrs, err := net.DefaultResolver.LookupHost(ctx, name)
			cancel()
			if err == nil {
				slices.Sort(addrs)
				fmt.Printf("%s %s\n", name, strings.Join(addrs, ","))
				break
			}
			if time.Now().After(end) {
				fmt.Printf("%s ERROR %v\n", name, err)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}
