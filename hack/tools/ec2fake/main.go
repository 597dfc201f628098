// Command ec2fake runs the EC2 fake (internal/cloud/aws/ec2fake) as a process, by default in
// cell mode: every instance is a real local cell on a bridge, running its user-data script
// as cloud-init would, with an instance metadata service. It prints one JSON line on stdout
// once it serves (the endpoint, region, VPC, subnets, images, bridge), and on SIGTERM or
// SIGINT removes every cell and the bridge before it exits. Cell mode needs root.
//
// Usage:
//
//	go build -o bin/ ./hack/tools/ec2fake
//	bin/ec2fake --listen 127.0.0.1:0 --bridge kipec2br0 --cidr 10.251.0.0/16
//
// Point kip at it with cloud.aws.endpoint = the printed endpoint, subnetID / subnetIDs =
// the printed subnets, imageID = one of the printed images; internal/cloud/aws/README.md
// has the whole recipe. Test controls (spot interruptions, capacity errors, a script's
// output) are served under <endpoint>/_fake/ (see ec2fake.Server.ControlHandler).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ec2fake:", err)
		os.Exit(1)
	}
}

// ready is what the fake prints on stdout once it serves.
type ready struct {
	Endpoint        string            `json:"endpoint"`
	PricingEndpoint string            `json:"pricingEndpoint"` // the Price List API (cloud.aws.pricingEndpoint)
	Control         string            `json:"control"`
	Region          string            `json:"region"`
	VPCID           string            `json:"vpcID"`
	VPCCIDR         string            `json:"vpcCIDR"`
	Subnets         map[string]string `json:"subnets"` // zone → subnet id
	Images          []ec2fake.Image   `json:"images"`
	InstanceProfile string            `json:"instanceProfile"`
	Bridge          string            `json:"bridge,omitempty"`
	BridgeIP        string            `json:"bridgeIP,omitempty"`
	IMDS            string            `json:"imds,omitempty"`
	StateDir        string            `json:"stateDir,omitempty"`
	// BakedImage is the image whose instances start with --baked-root's directories.
	BakedImage string `json:"bakedImage,omitempty"`
}

func run(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("ec2fake", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address the EC2 API listens on")
	noCells := fs.Bool("no-cells", false, "keep instances in memory only (no bridge, no root needed)")
	var c ec2fake.CellOptions
	fs.StringVar(&c.Bridge, "bridge", ec2fake.DefaultCellBridge, "bridge the cells attach to (created, and deleted on exit)")
	fs.StringVar(&c.CIDR, "cidr", ec2fake.DefaultCellCIDR, "the bridge's network: the VPC; its halves are the two subnets")
	fs.StringVar(&c.StateDir, "state-dir", "", "per-instance directories (default: a temporary directory, removed on exit)")
	var peers []netip.Prefix
	fs.Func("peer", "address or network on another host interface the VPC is routed to, and nothing else (repeatable; or later: POST <endpoint>/_fake/peers?peer=...): the pod address of a kip running in a local cell (internal/cloud/aws/README.md)", func(v string) error {
		p, err := ec2fake.ParsePeer(v)
		if err != nil {
			return err
		}
		peers = append(peers, p)
		return nil
	})
	var o ec2fake.Options
	fs.StringVar(&o.Region, "region", "us-east-1", "region; its zones are <region>a and <region>b")
	fs.DurationVar(&o.PendingDelay, "pending-delay", 0, "least time an instance stays pending")
	fs.DurationVar(&o.ShutdownDelay, "shutdown-delay", 0, "least time an instance stays shutting-down")
	fs.DurationVar(&o.DescribeDelay, "describe-delay", 0, "time a new instance stays invisible to DescribeInstances")
	fs.DurationVar(&o.SpotNotice, "spot-notice", ec2fake.DefaultSpotNotice, "time from a spot interruption notice to the interruption")
	bakedRoot := fs.String("baked-root", "", "a root baked with deploy/ami/bake.sh --root: adds image kip-cell-baked-<arch> (\"bakedImage\") whose instances start with its /opt/kip, /etc/kip, /var/lib/kip-cell, /etc/systemd/system and /var/log")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	c.Logger = log

	var f *ec2fake.Server
	if *noCells {
		f = ec2fake.New(o)
	} else if f, err = ec2fake.NewWithCells(o, c); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	if len(peers) > 0 {
		if *noCells {
			return errors.New("--peer needs cell mode")
		}
		if err := f.SetPeers(peers...); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/_fake/", http.StripPrefix("/_fake", f.ControlHandler()))
	mux.Handle("/", f)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	// The Price List API on a port of its own, so that kip's catalog refresh sees the fake's
	// instance types.
	pln, err := net.Listen("tcp", net.JoinHostPort(ln.Addr().(*net.TCPAddr).IP.String(), "0"))
	if err != nil {
		return err
	}
	psrv := &http.Server{Handler: f.PricingHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = psrv.Serve(pln) }()
	defer psrv.Close()

	var baked string
	if *bakedRoot != "" {
		arch := map[string]string{"amd64": "x86_64", "arm64": "arm64"}[runtime.GOARCH]
		baked = f.AddImage("kip-cell-baked-"+arch, ec2fake.OwnerID, arch, time.Now().UTC().Format(time.RFC3339))
		if err := f.SetImageRoot(baked, *bakedRoot); err != nil {
			return fmt.Errorf("flag --baked-root: %w", err)
		}
	}
	endpoint := "http://" + ln.Addr().String()
	r := ready{Endpoint: endpoint, PricingEndpoint: "http://" + pln.Addr().String(), Control: endpoint + "/_fake/", Region: f.Region(), VPCID: ec2fake.VPCID,
		VPCCIDR: f.VPCNetwork().String(), Images: f.Images(), InstanceProfile: ec2fake.InstanceProfile,
		Subnets: map[string]string{f.Region() + "a": ec2fake.SubnetA, f.Region() + "b": ec2fake.SubnetB}, BakedImage: baked}
	if !*noCells {
		r.Bridge, r.BridgeIP, r.IMDS, r.StateDir = c.Bridge, f.BridgeIP().String(), f.IMDSAddr().String(), f.StateDir()
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return err
	}
	log.Info("serving EC2", "endpoint", endpoint, "cells", !*noCells)

	select {
	case <-ctx.Done():
		log.Info("stopping: removing every cell")
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("shutting the API down", "err", err)
	}
	return nil
}
